"""Stage ``train_generator``: StyleGAN2 and its e4e encoder (mini, smoke), or the official files (paper)."""

from megafr import stages
from megafr.pretrain.autoencoder import GeneratorStageConfig as CONFIG

SHARED = {"profile": "profile", "seed": "seed", "model_path": "flame.model_path",
          "landmark_path": "flame.landmark_path"}
PRODUCTS = {"data_dir": stages.PREPARE_DIR}
load_config = stages.loader(__name__)
