"""Class names of ADE20K SceneParsing (150 classes), the labels of the users' shards.

``saev`` shards of ADE20K label every patch with 0 (other / unlabeled) or one of the 150
SceneParsing classes, 1 to 150, in the order of the benchmark's ``objectInfo150`` list
(each class by its first name there). A run with 151 classes gets these names unless the
user gives ``--class-names FILE`` (``io/results.py``).

Memory per process: one tuple of 151 short strings.
"""

from __future__ import annotations

__all__ = ["ADE20K_150", "ADE20K_NAMES"]

#: The 150 SceneParsing classes, label 1 to 150.
ADE20K_150 = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

#: Names of labels 0 to 150 as the shards store them: 0 is every patch of no class.
ADE20K_NAMES = ("other", *ADE20K_150)

assert len(ADE20K_150) == 150 and len(set(ADE20K_150)) == 150
