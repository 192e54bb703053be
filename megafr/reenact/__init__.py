"""MegaFR itself: the reenactment encoder E_FR, its six losses, training, inference and PTI (paper section 3)."""
