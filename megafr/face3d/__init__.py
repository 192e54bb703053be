"""3D face core: the FLAME layer, the synthetic FLAME-format head model, the renderer."""
