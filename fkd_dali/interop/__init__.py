"""Other projects' label formats: FKD's per-image files (read, write, import/export a store) and ReLabel's label maps."""
