"""Stage ``train_idnet``: the identity network (ArcFace IR-SE) behind L_ID and the ID-similarity metric."""

from megafr import stages
from megafr.pretrain.idnet import IdNetConfig as CONFIG

SHARED = {"profile": "profile", "seed": "seed"}
PRODUCTS = {"data_dir": stages.PREPARE_DIR}
load_config = stages.loader(__name__)
