"""`slotrun data convert KIND SRC OUT`: public datasets -> slotrun shards (see slotrun.data.shards), no TensorFlow.

One module per source format; each exposes `add_arguments(parser, kind)` and `run(kind, src, out, args) -> dict`
(each split's summary from `common.write`, the image size and the layout name to load it with) and documents,
in its docstring, the source layout and the fields it uses:

    multi_object   clevr_with_masks, multi_dsprites, tetrominoes, objects_room (DeepMind TFRecords; tfrecord.py)
    clevr          CLEVR v1.0 images + scenes JSON (set prediction)
    coco           COCO 2017 instances JSON + images (instance masks, categories, overlap ignore maps)
    shapestacks    ShapeStacks recordings + instance segmentation maps
    clevrtex       ClevrTex renders + flat masks
    folder         any folder of images (no masks)
"""

from __future__ import annotations

from types import ModuleType

from slotrun.data.convert import clevr, clevrtex, coco, folder, multi_object, shapestacks

KINDS: dict[str, ModuleType] = {
    **{kind: multi_object for kind in multi_object.KINDS},
    "clevr": clevr, "coco": coco, "shapestacks": shapestacks, "clevrtex": clevrtex, "folder": folder,
}

__all__ = ["KINDS"]
