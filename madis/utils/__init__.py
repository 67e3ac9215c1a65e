"""Small helpers shared by several MaDiS packages (no Ray, no model code): saving and loading
exported weights (:mod:`madis.utils.pretrained`) and lazily loaded package exports
(:mod:`madis.utils.lazy`)."""
