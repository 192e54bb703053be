"""Stage ``train_inversion``: the pSp encoder on the frozen generator (mini, smoke), or the official file (paper)."""

from megafr import stages
from megafr.pretrain.inversion import InversionStageConfig as CONFIG

SHARED = {"profile": "profile", "seed": "seed"}
PRODUCTS = {"data_dir": stages.PREPARE_DIR}
load_config = stages.loader(__name__)
