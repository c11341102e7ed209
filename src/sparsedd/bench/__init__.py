"""`sparsedd bench`: :mod:`.suite`, our trainers against the common DataLoader loop; :mod:`.preset`,
seconds per epoch of one preset's model and data."""
