"""Text-to-image policies (SD 1.x, FLUX.1), their sampler math and prompt sets."""
