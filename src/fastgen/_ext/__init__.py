"""Private compiled kernels. Import the public wrappers from fastgen.audio / fastgen.image."""
