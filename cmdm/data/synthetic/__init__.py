"""A procedural text-motion-scene dataset in HumanML3D's layout, plus afford-motion contact maps.

Why: CMDM must train and be tuned on a laptop CPU without downloading HumanML3D. This package
makes a small stand-in with the same files, shapes and conventions, so every code path (reader,
normalisation, evaluator, contacts) runs unchanged on it. The data is generated, not recorded.

How a clip is made (clips.py runs these steps; each module builds on the ones above it):
  1. body.py: a `Body`, the HumanML3D skeleton with its bones scaled +-5 % and a slightly personal
     posture (rotations.py: the quaternion and heading helpers).
  2. actions.py: a `Builder` strings 1-3 actions together (walk, run, jump, turn, sit, stand, wave,
     kick, squat, sidestep, raise arms, climb, clap, bow, punch, pick up). Each action writes keyframed
     animation channels (channels.py): pelvis path and heading, spine/neck/arm angles, and footprints.
     Every action starts from the pose the previous one ended in, so transitions blend smoothly.
  3. posing.py: `pose_clip` turns channels into joint rotations: upper body by composing local
     rotations, legs by a two-bone IK that puts each ankle on its footprint (so planted feet do not
     skate and stand exactly on the floor or on the step), and the pelvis height is the highest the
     planted legs reach. Rotations are converted to HumanML3D's per-chain quaternions and positions come
     from `skeleton.forward_kinematics` over the (scaled) default offsets: bone lengths are real.
  4. HumanML3D's pipeline: canonicalize -> extract_features (263-d) -> recover_from_ric.
  5. scene.py: a scene placed from the final joints: a floor patch plus the furniture the actions used
     (chair, step box, table) as point clouds, and afford-motion's contact distances.
  6. captions.py: captions from templates with synonyms, tagged `word/POS` by a small built-in lexicon.

Layout written by writer.py (HumanML3D + afford-motion): new_joint_vecs/, new_joints/, texts/, contacts/,
Mean.npy, Std.npy, train/val/test/all.txt, meta.json, and synthetic_manifest.json (written last: the
size and sha256 of every file; what lets the generator reuse or replace the folder, and nothing else).

    python -m cmdm.data.synthetic --out data/synthetic [--num 2000 --seed 0 --points 1024
                                                         --workers W --preview 6]
"""
from cmdm.data.synthetic.body import SIDE_NAMES
from cmdm.data.synthetic.captions import FAMILIES, FAMILY_VERBS, tag_caption
from cmdm.data.synthetic.channels import FPS
from cmdm.data.synthetic.clips import generate_clip
from cmdm.data.synthetic.rotations import facing_yaw, heading_vec, left_vec
from cmdm.data.synthetic.writer import dataset_problems, ensure_dataset, generate_dataset, generator_lock

__all__ = ["generate_dataset", "ensure_dataset", "dataset_problems", "generator_lock", "generate_clip",
           "FAMILIES", "FAMILY_VERBS", "SIDE_NAMES", "FPS", "tag_caption", "facing_yaw", "heading_vec", "left_vec"]
