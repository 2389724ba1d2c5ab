"""Development scripts: fuzzing, the browser check. Never shipped in the image."""
