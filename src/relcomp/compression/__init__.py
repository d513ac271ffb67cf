"""compression stage."""
