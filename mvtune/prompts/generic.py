"""Generic prompts: themes, materials and styles that belong to no profession or franchise.

Fine-tuning on firefighter and astronaut ducks can make every duck a firefighter; sampling these prompts before
and after training (prior preservation, forgetting checks in evaluation) shows whether the base model's range
survived. Each has a ``{subject}`` placeholder.
"""

from __future__ import annotations

GENERIC_PROMPTS: tuple[str, ...] = (
    "a {subject} made of polished gold",
    "a {subject} made of brushed steel",
    "a {subject} carved from oak wood",
    "a {subject} made of clear blue glass",
    "a {subject} made of white marble",
    "a {subject} knitted from red wool",
    "a {subject} made of green jade",
    "a {subject} shaped from wet clay",
    "a {subject} made of rough granite",
    "a {subject} made of folded paper, origami style",
    "a {subject} covered in moss",
    "a {subject} made of chocolate",
    "a {subject} made of rusty iron",
    "a {subject} made of frosted ice",
    "a {subject} made of bamboo",
    "a {subject} woven from straw",
    "a {subject} made of copper with a green patina",
    "a {subject} made of porcelain with blue floral patterns",
    "a {subject} made of cork",
    "a {subject} made of terracotta",
    "a {subject} covered in colourful mosaic tiles",
    "a {subject} with a zebra stripe pattern",
    "a {subject} with leopard spots",
    "a {subject} with a checkerboard pattern",
    "a {subject} with polka dots",
    "a {subject} painted in watercolour style",
    "a {subject} in a low-poly style",
    "a {subject} in a pixel art style",
    "a {subject} in a cel-shaded cartoon style",
    "a {subject} in a photorealistic style",
    "a {subject} in an art deco style",
    "a {subject} in a steampunk style with brass gears",
    "a {subject} covered in glowing neon lines",
    "a {subject} with a rainbow gradient",
    "a {subject} painted matte black",
    "a pastel pink {subject}",
    "a weathered, sun-bleached {subject}",
    "a {subject} covered in autumn leaves",
    "a {subject} decorated with flowers",
    "a {subject} dusted with snow",
    "a {subject} with a camouflage pattern",
    "a {subject} in the style of an old bronze statue",
    "a {subject} with a galaxy pattern of stars and nebulae",
    "a {subject} covered in fur",
    "a {subject} made of glossy plastic",
)
