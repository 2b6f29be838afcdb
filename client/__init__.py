"""The LoomFS client: the FUSE filesystem (`ops`, `meta`, `data`, `cluster`,
`mount`) and the `loomfs` command (`cli`)."""
