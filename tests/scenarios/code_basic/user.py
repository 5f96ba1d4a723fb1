"""Another module holding references taken with `from ... import`."""

from MODULE import Shape, func, wrapped

held = func
shape_class = Shape
held_wrapped = wrapped
