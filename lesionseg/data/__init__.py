"""Where the images come from: the archives, their pairing and checks, the prepared cache, external folders."""
