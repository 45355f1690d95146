"""The engine: the model thread, the pools registered in it, the memory plan (see :mod:`.engine`)."""
