"""The Zarr soft-label store: schema, create/open, chunk writes, pass reads (`label_store`); info, verify, show (`tools`)."""
