"""The protected-IP guard, both ways: every listed name is caught in disguise, ordinary prompts are not flagged."""

import re

import pytest

from mvtune.prompts import GENERIC_PROMPTS, load_concepts, sample_prompts
from mvtune.prompts.guard import (
    COMMON_WORDS,
    PROTECTED_TERMS,
    ProtectedPromptError,
    _key,
    ensure_allowed,
    find_protected,
)

from conftest import REPO

TEAM = ("Mario", "Bowser", "Samus", "Kratos", "Sonic", "Batman", "Superman", "Fortnite", "MrBeast")
LEET = str.maketrans({"o": "0", "e": "3", "a": "4", "i": "1", "s": "5", "t": "7"})


def _letters(term: str) -> list[int]:
    return [k for k, c in enumerate(term) if c.isalpha()]


def disguises(term: str) -> list[str]:
    """Spellings of one name a prompt writer might use to slip it past a filter."""
    letters = "".join(c for c in term if c.isalnum())
    out = [
        term, term.upper(), term.lower(), term.title(), term.swapcase(),
        " ".join(letters),                       # spacing: "M a r i o"
        ".".join(letters),                       # punctuation: "M.a.r.i.o"
        "-".join(term.split()),                  # "Donald-Duck"
        re.sub(r"[^A-Za-z0-9]", "", term),       # "DonaldDuck", "SpiderMan"
        term + "s", term + "'s",                 # plural, possessive
        term.lower().translate(LEET),            # leetspeak
        f"**{term}**!",
    ]
    if len(_key(term)) >= 6:
        middle = _letters(term)[len(_letters(term)) // 2]
        out += [
            term[:middle] + term[middle + 1:],                         # a letter dropped
            term[:middle] + "x" + term[middle + 1:],                   # a letter changed
            term[:middle] + term[middle] + term[middle:],              # a letter doubled
        ]
        nxt = middle + 1
        if nxt < len(term) and term[nxt].isalpha() and term[nxt].lower() != term[middle].lower():
            out.append(term[:middle] + term[nxt] + term[middle] + term[nxt + 1:])  # neighbours swapped
    # the documented exception: an edit that yields an everyday word ("Tigger" -> "Tiger") is that word
    return [text for text in out if text.lower() not in COMMON_WORDS]


def test_list_is_large_and_holds_the_teams_names():
    assert len(set(PROTECTED_TERMS)) >= 150
    assert len(set(PROTECTED_TERMS)) == len(PROTECTED_TERMS)
    for name in TEAM:
        assert name in PROTECTED_TERMS


@pytest.mark.parametrize("term", PROTECTED_TERMS)
def test_every_name_is_caught_in_disguise(term):
    for text in disguises(term):
        for prompt in (text, f"a duck dressed as {text}, stylized but clean"):
            assert find_protected(prompt) is not None, f"{prompt!r} (disguise of {term!r}) was not flagged"
    # the plain and disguised forms that keep every letter name this very term
    for text in disguises(term)[:13]:
        assert find_protected(f"a {text} figurine") == term, text


@pytest.mark.parametrize("text, term", [
    ("M4R10 kart duck", "Mario"), ("B0wz3r", "Bowser"), ("5amus aran", "Samus"), ("KRATOS!!!", "Kratos"),
    ("$onic the duck", "Sonic"), ("bat man duck", "Batman"), ("SUPER-MAN", "Superman"), ("fort nite skin", "Fortnite"),
    ("Mr. Beast", "MrBeast"), ("mr_beast duck", "MrBeast"), ("Pokémon trainer", "Pokemon"), ("1ego bricks", "Lego"),
    ("a Kirbies plush", "Kirby"), ("Batmans", "Batman"), ("Btaman", "Batman"),
    ("\u041c\u0430rio duck", "Mario"), ("\uff33\uff2f\uff2e\uff29\uff23", "Sonic"), ("Ma\u200brio", "Mario"),
])
def test_examples(text, term):
    assert find_protected(text) == term


@pytest.mark.parametrize("text", [
    "a marionette duck", "a sonicated emulsion", "a supermarket duck", "batmobile-free duck", "a samurai duck",
    "a duck in a bowler hat", "thanks duck", "a hermit crab shell", "swim goggles", "a marble duck",
    "matte black duck", "a chapel bell", "a browser window", "a bowling duck", "a water pistol with a trigger",
    "a tiger-striped duck", "a bigger duck", "no matter the colour", "a duck on a digger", "linking chains",
])
def test_word_boundaries_and_near_words(text):
    assert find_protected(text) is None


def test_user_terms_and_override():
    assert find_protected("a Quackmore duck") is None
    assert find_protected("a Quackmore duck", extra_terms=["Quackmore"]) == "Quackmore"
    assert find_protected("a quack-more duck", extra_terms=["Quackmore"]) == "Quackmore"
    with pytest.raises(ProtectedPromptError) as info:
        ensure_allowed("Mario duck")
    assert info.value.term == "Mario" and "Mario" in str(info.value)
    assert ensure_allowed("Mario duck", override=True) == "Mario"
    assert ensure_allowed("a yellow duck") is None


GENERAL = [
    "a yellow rubber duck", "a wooden toy train", "a ceramic teapot with blue flowers", "a red fire truck toy",
    "an old leather armchair", "a green dragon figurine", "a pirate ship model with black sails",
    "a knight in silver armour", "a medieval castle with four towers", "a cute robot with round eyes",
    "a vintage camera", "a brass telescope on a tripod", "a stack of pancakes with syrup", "a red apple",
    "a bonsai tree in a clay pot", "a treasure chest full of coins", "a cartoon cat wearing sunglasses",
    "a penguin in a scarf", "an owl perched on a branch", "a fox sitting in the snow", "a snail with a spiral shell",
    "a hermit crab in a big shell", "a frog on a lily pad", "a turtle with a mossy shell", "a small sailboat",
    "a hot air balloon", "a rocket ship", "a vintage motorcycle", "a steam locomotive", "a tractor",
    "a bicycle with a basket", "a wizard with a long beard", "a witch on a broom", "a ghost with a lantern",
    "a cowboy boot", "a sneaker with white laces", "a top hat", "a bowler hat", "a baseball cap", "a straw hat",
    "swim goggles", "ski goggles on a helmet", "a matte black vase", "a marble bust", "a chess knight piece",
    "a bowling pin", "a toy soldier", "a music box", "a violin", "an acoustic guitar", "a drum set",
    "a trumpet", "a ukulele", "a jukebox", "a rotary telephone", "a typewriter", "a desk lamp", "a lava lamp",
    "a cuckoo clock", "a pocket watch", "an hourglass", "a lighthouse on a rock", "a windmill", "a wooden barn",
    "a tiny house with a red roof", "a mushroom house", "a gingerbread house", "a cupcake with sprinkles",
    "a slice of watermelon", "a pineapple", "a bunch of grapes", "a cactus in a pot", "a sunflower",
    "a rose in a vase", "a tulip", "a garden gnome", "a scarecrow", "a snowman with a carrot nose",
    "a pumpkin lantern", "a christmas tree with lights", "an easter egg", "a teddy bear", "a rag doll",
    "a rocking horse", "a spinning top", "a yo-yo", "a kite", "a paper airplane", "a dinosaur skeleton",
    "a trex toy", "a unicorn plush", "a mermaid statue", "a phoenix made of fire", "a griffin statue",
    "a samurai helmet", "a viking helmet with horns", "a roman centurion", "an egyptian sarcophagus",
    "a totem pole", "a crystal ball", "a magic wand", "a spell book", "a potion bottle", "a sword in a stone",
    "a shield with a lion crest", "a bow and arrows", "a catapult", "a canon", "a hermit in a cave",
    "a duck wearing a monocle", "a duck with a bow tie", "a duck in a raincoat", "a duck in a sailor suit",
    "a duck with a tiny crown", "a duck in a tuxedo", "a duck with headphones", "a duck wearing a scarf",
    "a duck with a backpack", "a duck holding an umbrella", "a duck in a lab coat", "a duck in pyjamas",
    "a duck in a tracksuit", "a duck with roller skates", "a duck on a skateboard", "a duck on a surfboard",
    "a duck in a canoe", "a duck in a bathtub", "a duck in a teacup", "a duck with a trigger happy grin",
    "thanks to the sun, a bright duck", "a browser-shaped duck", "a hermit duck", "a witches hat on a duck",
]


def test_hundreds_of_generic_prompts_pass():
    concepts = load_concepts(REPO / "examples" / "concepts" / "ducks.yaml")
    prompts = list(GENERAL)
    for subject in ("duck", "cat", "teapot", "chair", "robot", "rabbit"):
        prompts += concepts.generic_prompts(subject)
    prompts += [row.prompt for row in sample_prompts(concepts, 40)]
    assert len(set(prompts)) >= 300
    flagged = [(p, find_protected(p)) for p in prompts if find_protected(p)]
    assert not flagged
    assert len(GENERIC_PROMPTS) >= 40 and all("{subject}" in p for p in GENERIC_PROMPTS)
