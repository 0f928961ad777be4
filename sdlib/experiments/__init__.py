"""One module per notebook: the functions a notebook calls. ``common`` holds what they share."""
