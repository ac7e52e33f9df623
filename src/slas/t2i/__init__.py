"""Text-to-image: the SD 1.x and FLUX.1 policies (``Policy`` protocol over diffusers pipelines), their
sampler math (``sde``) and the prompt data source (``prompts``)."""
