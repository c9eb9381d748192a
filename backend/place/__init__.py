"""Place mode's image work: cut the product out (cutout), lay it on the canvas (layout), and finish the
generated scene around it (composite). Import the submodule you need: layout is light enough for the
frontend (PIL only), so this package imports nothing on its own."""
