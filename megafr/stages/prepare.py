"""Stage ``prepare``: the SynthHeads data set (mini, smoke) or FFHQ-aligned photos (paper)."""

from megafr import stages
from megafr.datasets.prepare import PrepareConfig as CONFIG

SHARED = {"profile": "profile", "seed": "seed", "model_path": "flame.model_path",
          "landmark_path": "flame.landmark_path"}
PRODUCTS = {"out_dir": stages.PREPARE_DIR}
load_config = stages.loader(__name__)
