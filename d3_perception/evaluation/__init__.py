"""Evaluation: one metrics core (:mod:`.metrics`), benchmark readers (:mod:`.datasets`, ``d3-eval``) and rosbag
evaluation (:mod:`.bag_source`, :mod:`.bag_eval`, ``d3-eval-bag``) with reports and plots. No ROS imports.

>>> from d3_perception.evaluation.metrics import DepthProtocol, evaluate_depth
>>> proto = DepthProtocol(min_depth_m=1e-3, max_depth_m=10.0)
>>> metrics, aligned_m = evaluate_depth(pred_rel, gt_m, proto.valid_mask(gt_m), proto)
"""
