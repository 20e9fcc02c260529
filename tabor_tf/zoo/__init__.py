"""Victim-model zoo: BadNet victims with ground-truth cards, for tests, demos and evaluation.

One module per step of building a victim:

    architectures  build_model(arch, input_shape, num_classes)  (tiny, gtsrb6, gtsrb10, resnet_small,
                   mobilenet_small, vgg16, resnet50)
    triggers       TriggerSpec(...).render(image_shape) -> mask [H,W], pattern [H,W,C] (raw 0..255)
    poisoning      Backdoor(trigger, target | mode="all-to-all"); poison(x, y, backdoors, rate)
    training       train(model, x, y, settings, preprocess=...); evaluate(...) -> clean acc, ASR
    card           write/load the ground-truth card; true_mask(card)
    recipe         zoo recipe JSON -> VictimSpec list
    build          build_victim(spec, data, out) / build_zoo(recipe, source(s), out)
    eval_zoo       the dev/test evaluation zoo of issue 11 (writes models/recipes/eval-*.json)
"""

from .architectures import ARCHITECTURES, build_model
from .build import ZooData, build_victim, build_zoo, load_zoo_data, synthetic_data
from .card import VictimCard, load_card, true_mask
from .poisoning import Backdoor, apply_trigger, poison
from .recipe import Recipe, SyntheticSettings, VictimSpec, load_recipe, parse_recipe, resolve_entry
from .training import TrainSettings, evaluate, predict_labels, train
from .triggers import DEFAULT_ICON, TriggerSpec

__all__ = [
    "ARCHITECTURES", "build_model", "ZooData", "build_victim", "build_zoo", "load_zoo_data",
    "synthetic_data", "VictimCard", "load_card", "true_mask", "Backdoor", "apply_trigger", "poison",
    "Recipe", "SyntheticSettings", "VictimSpec", "load_recipe", "parse_recipe", "resolve_entry",
    "TrainSettings", "evaluate", "predict_labels", "train", "DEFAULT_ICON", "TriggerSpec",
]
