"""Head pose as yaw / pitch / roll angles, and the FLAME pose vector.

FLAME's pose vector holds five axis-angle rotations (``docs/method.md`` section 7):
global, neck, jaw, left eye, right eye -> ``[B, 15]``. People think of head pose as
yaw, pitch and roll, so the data set samples those and converts. Axis-angle <->
matrix conversions come from kornia; the Euler composition (three 3x3 matrices) is
written here because kornia's Euler helpers are quaternion-based in a fixed
roll-pitch-yaw order that does not match the head-pose convention below.

Convention (FLAME model space: +x subject's left, +y up, +z toward the viewer):
``R = R_y(yaw) @ R_x(pitch) @ R_z(roll)``;
yaw > 0 turns the face toward +x (the subject's left, the image's right in a frontal view),
pitch > 0 tilts the chin down, roll > 0 tilts the head counter-clockwise as seen by the viewer.
"""

from __future__ import annotations

import math

import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix, rotation_matrix_to_axis_angle

from megafr.face3d.flame import POSE_DIM  # 5 joints x axis-angle

GLOBAL = slice(0, 3)
NECK = slice(3, 6)
JAW = slice(6, 9)
LEFT_EYE = slice(9, 12)
RIGHT_EYE = slice(12, 15)


def _axis_rotation(angle: torch.Tensor, axis: int) -> torch.Tensor:
    """Rotation matrices [B, 3, 3] about coordinate axis ``axis`` (0=x, 1=y, 2=z) by ``angle`` [B] radians."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(angle), torch.zeros_like(angle)
    if axis == 0:
        rows = [one, zero, zero, zero, cos, -sin, zero, sin, cos]
    elif axis == 1:
        rows = [cos, zero, sin, zero, one, zero, -sin, zero, cos]
    else:
        rows = [cos, -sin, zero, sin, cos, zero, zero, zero, one]
    return torch.stack(rows, dim=-1).reshape(*angle.shape, 3, 3)


def euler_to_matrix(yaw: torch.Tensor, pitch: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """``R_y(yaw) @ R_x(pitch) @ R_z(roll)`` for angles [B] in radians -> [B, 3, 3]."""
    return _axis_rotation(yaw, 1) @ _axis_rotation(pitch, 0) @ _axis_rotation(roll, 2)


def matrix_to_euler(rotation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`euler_to_matrix` (valid for |pitch| < 90 degrees) -> yaw, pitch, roll [B]."""
    # R = Ry Rx Rz: R[1,2] = -sin(pitch); R[0,2] = sin(yaw)cos(pitch); R[2,2] = cos(yaw)cos(pitch);
    # R[1,0] = cos(pitch)sin(roll); R[1,1] = cos(pitch)cos(roll)
    pitch = torch.asin((-rotation[..., 1, 2]).clamp(-1.0, 1.0))
    yaw = torch.atan2(rotation[..., 0, 2], rotation[..., 2, 2])
    roll = torch.atan2(rotation[..., 1, 0], rotation[..., 1, 1])
    return yaw, pitch, roll


def euler_to_axis_angle(yaw: torch.Tensor, pitch: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Yaw, pitch, roll [B] in radians -> axis-angle [B, 3] (FLAME's global rotation)."""
    return rotation_matrix_to_axis_angle(euler_to_matrix(yaw, pitch, roll).contiguous())


def axis_angle_to_euler(axis_angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Axis-angle [B, 3] -> yaw, pitch, roll [B] in radians."""
    return matrix_to_euler(axis_angle_to_rotation_matrix(axis_angle))


def head_pose_degrees(pose: torch.Tensor) -> torch.Tensor:
    """Yaw, pitch, roll in degrees [B, 3] of a FLAME pose vector [B, 15] (global rotation only)."""
    if pose.shape[-1] != POSE_DIM:
        raise ValueError(f"pose must be [B, {POSE_DIM}] (FLAME: global, neck, jaw, eyes), got {tuple(pose.shape)}")
    yaw, pitch, roll = axis_angle_to_euler(pose[:, GLOBAL])
    return torch.stack([yaw, pitch, roll], dim=-1) * (180.0 / math.pi)
