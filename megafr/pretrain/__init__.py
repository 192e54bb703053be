"""Mini-world pretraining of the networks the paper takes pretrained: ArcFace, StyleGAN2, e4e and pSp.

- ``idnet``: the IR-SE ArcFace identity network (stage ``train_idnet``);
- ``autoencoder``: StyleGAN2 generator + e4e encoder + latent discriminator (stage ``train_generator``);
- ``inversion``: the pSp encoder on the frozen generator (stage ``train_inversion``);
- ``latent_structure``: the layer-swap measurement of the W+ space;
- ``common``: data order, schedules and stage folders shared by the three stages;
- ``evaluate``: their metrics and figures (metric definitions in ``megafr.metrics``).
"""
