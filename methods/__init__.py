"""Memory methods, one file each; every module here registers itself on import."""
