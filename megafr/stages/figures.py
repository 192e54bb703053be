"""Stage ``figures``: the study's result figures and MegaFR's applications, from the trained networks."""

from megafr import stages
from megafr.figures.config import FiguresConfig as CONFIG

# The networks shown are the ones train_reenact trained against, so their files are read from its block.
SHARED = {"profile": "profile", "generator_path": "train_reenact.generator_path",
          "e4e_path": "train_reenact.e4e_path", "psp_path": "train_reenact.psp_path",
          "face3d_path": "train_reenact.face3d_path", "idnet_path": "train_reenact.idnet_path",
          "model_path": "flame.model_path", "landmark_path": "flame.landmark_path", "source": "prepare.source"}
PRODUCTS: dict[str, str] = {}
load_config = stages.loader(__name__)
