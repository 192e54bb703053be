"""Stage ``train_face3d``: the 3D face reconstruction network (paper section 3.1)."""

from megafr import stages
from megafr.face3d.train import TrainConfig as CONFIG

SHARED = {"profile": "profile", "seed": "seed", "model_path": "flame.model_path",
          "landmark_path": "flame.landmark_path", "source": "prepare.source", "image_size": "prepare.image_size"}
PRODUCTS = {"data_dir": stages.PREPARE_DIR}
load_config = stages.loader(__name__)
