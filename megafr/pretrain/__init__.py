"""Mini-world pretraining of the networks the paper takes pretrained (issue 7).

- ``idnet``: the IR-SE ArcFace identity network (stage ``train_idnet``);
- ``autoencoder``: StyleGAN2 generator + e4e encoder + latent discriminator (stage ``train_generator``);
- ``inversion``: the pSp encoder on the frozen generator (stage ``train_inversion``);
- ``latent_structure``: the layer-swap measurement of the W+ space;
- ``common`` / ``metrics``: checkpoint-resume loop pieces and the image / identity metrics.
"""
