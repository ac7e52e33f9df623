"""The product-in-hand world: rendered person and product images, the target edit (the person holding the
product) and a ground-truth judge that reads only the three images (issue 13, items 1 and 2).

``scene`` holds the parameters (dataclasses, sampled from a seeded generator), ``render`` draws them,
``corrupt`` makes the single-failure edits, ``judge`` says per criterion whether an edit is right.
"""
