"""Products: the catalog's products and the form to add one."""

from frontend.views import products

products.draw()
