"""The 68 facial landmarks in iBUG-300W order, and the groups the losses use.

Indices are 0-based. The same order is used by dlib's 68-point predictor, by DECA's
``full_lmk_faces_idx`` landmark embedding of FLAME, and by the synthetic head model.
"""

N_LANDMARKS = 68

JAW = tuple(range(0, 17))
RIGHT_BROW = tuple(range(17, 22))
LEFT_BROW = tuple(range(22, 27))
NOSE = tuple(range(27, 36))
RIGHT_EYE = tuple(range(36, 42))  # subject's right eye, on the image's left
LEFT_EYE = tuple(range(42, 48))
OUTER_LIP = tuple(range(48, 60))
INNER_LIP = tuple(range(60, 68))

EYES = RIGHT_EYE + LEFT_EYE
MOUTH = OUTER_LIP + INNER_LIP

# (upper, lower) landmark pairs whose vertical gap measures eye and mouth opening;
# L_pair (paper eq. 5) compares these gaps between target and output.
EYELID_PAIRS = ((37, 41), (38, 40), (43, 47), (44, 46))
LIP_PAIRS = ((50, 58), (51, 57), (52, 56), (61, 67), (62, 66), (63, 65))
PAIRS = EYELID_PAIRS + LIP_PAIRS

# Mouth corners (FFHQ's alignment takes the mouth position as their midpoint).
MOUTH_CORNERS = (48, 54)

# Outer eye corners, used to normalise landmark errors (inter-ocular NME).
RIGHT_EYE_OUTER = 36
LEFT_EYE_OUTER = 45


def landmark_weights(eye_weight: float, mouth_weight: float, other_weight: float = 1.0) -> list[float]:
    """Per-landmark weights [68] with larger values on eyes and mouth (paper section 3.1)."""
    weights = [other_weight] * N_LANDMARKS
    for i in EYES:
        weights[i] = eye_weight
    for i in MOUTH:
        weights[i] = mouth_weight
    return weights
