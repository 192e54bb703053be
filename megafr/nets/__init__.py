"""Networks of the paper world (StyleGAN2, e4e, pSp, latent discriminator, ArcFace) and their loaders."""
