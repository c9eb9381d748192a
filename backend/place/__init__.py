"""Place mode's image work: cut the product out, lay it on the canvas, and finish the generated scene around it."""

from backend.place.composite import finish
from backend.place.cutout import BackgroundRemover, NothingFound, cut_out, has_transparency
from backend.place.layout import Placement, init_canvas, inpaint_mask, place

__all__ = ["BackgroundRemover", "NothingFound", "Placement", "cut_out", "finish", "has_transparency",
           "init_canvas", "inpaint_mask", "place"]
