"""Pure geometry functions: cameras, rotations, tetrahedral grids, marching tetrahedra,
mesh operations, triangulation and pose estimation. No state, no nn.Modules."""

from gphm.geometry.cameras import (
    camera_centers,
    focal_from_fov,
    intrinsics,
    invert_viewmat,
    look_at,
    project_points,
    rescale_K,
    transform_points,
    world_to_camera,
)
from gphm.geometry.rotations import (
    axis_angle_to_matrix,
    axis_angle_to_quat,
    matrix_to_axis_angle,
    matrix_to_quat,
    quat_conjugate,
    quat_multiply,
    quat_normalize,
    quat_rotate,
    quat_to_axis_angle,
    quat_to_matrix,
)
