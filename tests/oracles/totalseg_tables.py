"""Print TotalSegmentator's task tables as voxpipe keeps them (``voxpipe/pipelines/inference/totalseg/
tables.json``), from the TotalSegmentator package on ``sys.path`` (``make oracle`` installs 2.18.0).

    python tests/oracles/totalseg_tables.py > voxpipe/pipelines/inference/totalseg/tables.json

The tables are data, not code: each task's dataset ids, trainer, configuration, folds, spacing and
crop, each model's folder name and release, and the label names TotalSegmentator writes. The test
``tests/test_totalseg.py`` checks that the file voxpipe ships equals what this prints.
"""

from __future__ import annotations

import json
import sys


def tables() -> dict:
    from totalsegmentator import map_to_binary as names
    from totalsegmentator.map_tasks_config import DEFAULT_CONFIG, TASK_CONFIGS, TASK_ID_WEIGHTS_CONFIGS

    def labels(mapping: dict) -> dict:
        return {str(k): v for k, v in sorted(mapping.items())}

    parts = {
        "total": (names.class_map_5_parts, names.map_taskid_to_partname_ct),
        "total_v3": (names.class_map_5_parts_total_v3, names.map_taskid_to_partname_ct_v3),
        "total_mr": (names.class_map_parts_mr, names.map_taskid_to_partname_mr),
        "headneck_muscles": (
            names.class_map_parts_headneck_muscles,
            names.map_taskid_to_partname_headneck_muscles,
        ),
    }
    return {
        "source": "TotalSegmentator 2.18.0 (Apache-2.0), totalsegmentator/map_tasks_config.py and map_to_binary.py",
        "defaults": DEFAULT_CONFIG,
        "tasks": TASK_CONFIGS,
        "weights": {str(k): v for k, v in TASK_ID_WEIGHTS_CONFIGS.items()},
        "classes": {task: labels(m) for task, m in names.class_map.items()},
        "parts": {
            task: {str(tid): labels(maps[part]) for tid, part in by_id.items() if part in maps}
            for task, (maps, by_id) in parts.items()
        },
        "licensed": sorted(names.commercial_models),
    }


if __name__ == "__main__":
    json.dump(tables(), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
