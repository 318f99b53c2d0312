"""The protected-IP guard: refuse prompts that name a protected franchise, character, brand or celebrity.

Image and mesh generators refuse such prompts (the team's SDXL service did for Mario, Sonic and Batman) and data
made from them cannot be published, so every prompt mvtune sends to a generator passes `ensure_allowed` first.

Matching works on a folded form of the text, so disguises match the listed spelling:
accents dropped, Cyrillic/Greek look-alike letters and full-width forms mapped to Latin, lower case, camelCase
split ("MrBeast" -> "mr beast"), leetspeak folded (0->o, 3->e, 4/@->a, 5/$->s, 7->t, ...; 1, ! and | are read as
"i" and, in a second pass, as "l"), then the words are
joined across spaces and punctuation ("Bat-Man", "M a r i o", "S.o.n.i.c" are "batman", "mario", "sonic"). A
name matches whole words only ("marionette" is not Mario), with a plural or possessive ending, and names of six
letters or more also within one edit (a letter added, dropped, changed, or two neighbours swapped). Common words
one edit away from a name ("bowler" from Bowser, "thanks" from Thanos) only match exactly.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache


class ProtectedPromptError(ValueError):
    """A prompt names a protected term; pass an explicit override to use it anyway (it is then recorded)."""

    def __init__(self, term: str, text: str):
        self.term, self.text = term, text
        super().__init__(
            f"prompt names the protected term {term!r}: {text!r}; rephrase it without the name, or pass an "
            "explicit override (recorded in the provenance of everything made from it)"
        )


#: Built-in protected names, as they are usually spelled. Names that are also everyday words ("Link", "Halo",
#: "Joker", "Drake", "Apple") are left out on purpose: they would flag ordinary prompts; add them per project with
#: `protected_terms` if needed.
PROTECTED_TERMS: tuple[str, ...] = (
    # video games
    "Mario", "Luigi", "Bowser", "Princess Peach", "Wario", "Waluigi", "Yoshi", "Donkey Kong", "Diddy Kong",
    "Zelda", "Ganondorf", "Kirby", "Samus", "Metroid", "Pikmin", "Splatoon", "Animal Crossing", "Tom Nook",
    "Pokemon", "Pikachu", "Charizard", "Charmander", "Bulbasaur", "Squirtle", "Jigglypuff", "Mewtwo", "Eevee",
    "Snorlax", "Gengar", "Kratos", "Sonic", "Dr. Eggman", "Master Chief", "Lara Croft", "Tomb Raider", "Pac-Man",
    "Mega Man", "Fortnite", "Minecraft", "Roblox", "Overwatch", "Genshin Impact", "Final Fantasy", "Sephiroth",
    "Cloud Strife", "Kingdom Hearts", "Street Fighter", "Chun-Li", "Mortal Kombat", "Crash Bandicoot", "Spyro",
    "Rayman", "Cuphead", "Sackboy", "Solid Snake", "Metal Gear", "Resident Evil", "Geralt of Rivia", "Witcher",
    "Assassin's Creed", "Angry Birds", "Tetris", "Space Invaders", "Nintendo", "PlayStation", "Xbox", "Sega",
    "Digimon", "Yu-Gi-Oh",
    # comics, film and television
    "Batman", "Superman", "Spider-Man", "Iron Man", "Captain America", "Hulk", "Deadpool", "Wonder Woman",
    "Aquaman", "Catwoman", "Harley Quinn", "Green Lantern", "Thanos", "Groot", "Doctor Strange", "Marvel",
    "DC Comics", "Darth Vader", "Yoda", "Grogu", "Luke Skywalker", "Chewbacca", "R2-D2", "C-3PO", "Stormtrooper",
    "Mandalorian", "Boba Fett", "Star Wars", "Star Trek", "Spock", "Harry Potter", "Hogwarts", "Dumbledore",
    "Voldemort", "Hermione Granger", "Gandalf", "Frodo Baggins", "Gollum", "Sauron", "Shrek", "Buzz Lightyear",
    "Toy Story", "Finding Nemo", "Simba", "Lion King", "Mickey Mouse", "Minnie Mouse", "Donald Duck", "Daisy Duck",
    "Scrooge McDuck", "Winnie the Pooh", "Tigger", "Moana", "Bugs Bunny", "Daffy Duck", "Looney Tunes",
    "Porky Pig", "Wile E. Coyote", "Scooby-Doo", "Tom and Jerry", "SpongeBob", "Squidward", "Bart Simpson",
    "Homer Simpson", "The Simpsons", "Futurama", "Rick and Morty", "Peppa Pig", "Paw Patrol", "Teletubby",
    "Elmo", "Kermit the Frog", "Miss Piggy", "Muppet", "Sesame Street", "Garfield", "Snoopy", "Charlie Brown",
    "Smurf", "Tintin", "Asterix", "Obelix", "Astro Boy", "Godzilla", "King Kong", "Totoro", "Studio Ghibli",
    "Naruto", "Goku", "Dragon Ball", "Sailor Moon", "Luffy", "Doraemon", "Gundam", "Evangelion",
    "Teenage Mutant Ninja Turtles", "Power Rangers", "He-Man", "Optimus Prime", "Megatron", "Ghostbusters",
    "Jurassic Park", "Indiana Jones", "James Bond", "Terminator", "RoboCop", "Xenomorph", "Pennywise",
    "Freddy Krueger", "Hannibal Lecter", "Disney", "Pixar", "DreamWorks", "Warner Bros", "Netflix",
    # toys
    "Barbie", "Lego", "Hot Wheels", "Polly Pocket", "My Little Pony", "Care Bears", "Furby", "Tamagotchi",
    "Funko", "Nerf", "Play-Doh", "Fisher-Price", "Hasbro", "Mattel", "Beyblade", "Hello Kitty", "Sanrio",
    "Rubik's Cube", "Cabbage Patch Kids",
    # brands
    "Nike", "Adidas", "Gucci", "Prada", "Louis Vuitton", "Rolex", "Ferrari", "Lamborghini", "Porsche",
    "Coca-Cola", "Pepsi", "Starbucks", "McDonald's", "Ronald McDonald", "Burger King", "KFC", "Microsoft",
    "iPhone", "Samsung", "Harley-Davidson", "Ikea", "Pringles", "Michelin", "Pillsbury Doughboy", "Kool-Aid",
    "Duolingo", "TikTok", "YouTube", "Instagram", "Facebook", "Spotify", "Gatorade", "Doritos", "Cheetos", "Oreo",
    # celebrities
    "MrBeast", "PewDiePie", "Markiplier", "Pokimane", "Taylor Swift", "Elon Musk", "Beyonce", "Kim Kardashian",
    "Kanye West", "Rihanna", "Lady Gaga", "Justin Bieber", "Ariana Grande", "Billie Eilish", "Ed Sheeran",
    "Dwayne Johnson", "Keanu Reeves", "Tom Cruise", "Brad Pitt", "Leonardo DiCaprio", "Scarlett Johansson",
    "Zendaya", "Snoop Dogg", "Eminem", "Michael Jackson", "Elvis Presley", "Marilyn Monroe", "Donald Trump",
    "Joe Biden", "Barack Obama", "Cristiano Ronaldo", "Lionel Messi", "LeBron James", "Michael Jordan",
    "Serena Williams", "Usain Bolt", "Oprah Winfrey", "Jackie Chan", "Bruce Lee", "Arnold Schwarzenegger",
    "Sylvester Stallone", "Jeff Bezos", "Mark Zuckerberg", "Bill Gates", "Steve Jobs", "Kylie Jenner",
    "Selena Gomez", "Shakira", "Dolly Parton",
)

#: Everyday words one edit away from a listed name: they match only when spelled exactly like the name.
COMMON_WORDS = frozenset({
    "bowler", "bowlers", "browser", "browsers", "bowers", "thanks", "hermit", "hermits", "trigger", "triggers",
    "boatman", "witches", "channel", "channels", "chapel", "chapels", "goggle", "goggles", "tiger", "tigers",
    "bigger", "digger", "diggers", "tagger", "matte", "matter", "matters", "linking",
})

_LEET = {"0": "o", "3": "e", "4": "a", "@": "a", "5": "s", "$": "s", "7": "t", "8": "b", "9": "g", "6": "g", "2": "z"}
#: "1", "!" and "|" stand for "i" or "l": text holding them is read both ways.
_LEET_I = str.maketrans(_LEET | {"1": "i", "!": "i", "|": "i"})
_LEET_L = str.maketrans(_LEET | {"1": "l", "!": "l", "|": "l"})
_MIN_FUZZY = 6
_WORD = re.compile(r"[a-z0-9@$!|']+")


#: Cyrillic and Greek letters that look like Latin ones ("Маrio" with a Cyrillic М); NFKD leaves them alone.
_HOMOGLYPHS = str.maketrans({
    "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "т": "t", "у": "y",
    "х": "x", "і": "i", "ј": "j", "ѕ": "s", "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O",
    "Р": "P", "С": "C", "Т": "T", "Х": "X", "І": "I", "Ѕ": "S", "α": "a", "ο": "o", "ι": "i", "κ": "k", "ν": "v",
    "ρ": "p", "τ": "t", "υ": "u", "Α": "A", "Β": "B", "Ε": "E", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O",
    "Ρ": "P", "Τ": "T", "Χ": "X", "Υ": "Y", "Ζ": "Z",
})


def fold(text: str) -> str:
    """The text as the guard compares it: plain ASCII, lower case, camelCase split, leetspeak folded."""
    text = unicodedata.normalize("NFKD", text.replace("\u2019", "'").translate(_HOMOGLYPHS))
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", text).lower()
    return text


def _words(text: str, table=_LEET_I) -> list[str]:
    words = []
    for run in _WORD.findall(fold(text)):
        run = run.replace("'", "").strip("!|")  # "Mario!" ends a sentence; "B!owser" hides a letter
        if not run:
            continue
        words.append(run.translate(table))
    return words


def _key(term: str) -> str:
    return "".join(_words(term))


def _endings(key: str) -> set[str]:
    forms = {key, key + "s", key + "es"}
    if key.endswith("y"):
        forms.add(key[:-1] + "ies")
    return forms


def _deletes(word: str) -> set[str]:
    return {word[:k] + word[k + 1:] for k in range(len(word))}


def _one_edit(a: str, b: str) -> bool:
    """Optimal string alignment distance <= 1 (a swap of two neighbours counts as one edit)."""
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [k for k in range(len(a)) if a[k] != b[k]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]]
                                  and a[diff[1]] == b[diff[0]])
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return any(long_[:k] + long_[k + 1:] == short for k in range(len(long_)))


class _Index:
    """Exact forms (with plural endings) and a one-deletion index of the long names, for one term list."""

    def __init__(self, terms: Iterable[str]):
        self.exact: dict[str, str] = {}
        self.fuzzy: dict[str, set[str]] = {}
        self.term_of: dict[str, str] = {}
        self.longest = 0
        self._seen: dict[str, str | None] = {}  # spans repeat across the prompts of one set
        for term in terms:
            key = _key(term)
            if not key:
                continue
            self.term_of.setdefault(key, term)
            self.longest = max(self.longest, len(key) + 3)  # an edit and a plural ending
            for form in _endings(key):
                self.exact.setdefault(form, term)
            if len(key) >= _MIN_FUZZY:
                for variant in _deletes(key) | {key}:
                    self.fuzzy.setdefault(variant, set()).add(key)

    def match(self, span: str) -> tuple[str, bool] | None:
        """(term, exact) for a joined run of words, or None."""
        if span not in self._seen:
            if len(self._seen) > 200_000:
                self._seen.clear()
            self._seen[span] = self._match(span)
        return self._seen[span]

    def _match(self, span: str) -> tuple[str, bool] | None:
        term = self.exact.get(span)
        if term is not None:
            return term, True
        if len(span) < _MIN_FUZZY - 1 or span in _COMMON:
            return None
        stems = {span}
        if span.endswith("s"):
            stems |= {span[:-1], span[:-2] if span.endswith("es") else span}
        for stem in stems:
            if len(stem) < _MIN_FUZZY - 1 or stem in _COMMON:
                continue
            for variant in _deletes(stem) | {stem}:
                for key in self.fuzzy.get(variant, ()):
                    if _one_edit(stem, key):
                        return self.term_of[key], False
        return None


_COMMON = frozenset(_key(word) for word in COMMON_WORDS)


@lru_cache(maxsize=32)
def _index(extra_terms: tuple[str, ...]) -> _Index:
    return _Index(PROTECTED_TERMS + extra_terms)


def find_protected(text: str, extra_terms: Iterable[str] = ()) -> str | None:
    """The listed term (as spelled in the list) that ``text`` names, or None."""
    index = _index(tuple(extra_terms))
    readings = [_words(text)]
    if re.search(r"[1!|]", text):
        readings.append(_words(text, _LEET_L))
    near = None
    for words in readings:
        for start in range(len(words)):
            # exact matches beat near ones anywhere in the text ("a Luigi" is Luigi, not one edit from Waluigi);
            # at one start the longest wins ("Snoop Dogg", not Snoopy)
            best, span = None, ""
            for word in words[start:]:
                span += word
                if len(span) > index.longest:
                    break
                found = index.match(span)
                if found is not None and (best is None or found[1] or not best[1]):
                    best = found
            if best is not None and best[1]:
                return best[0]
            if best is not None and near is None:
                near = best[0]
    return near


def ensure_allowed(text: str, extra_terms: Iterable[str] = (), override: bool = False) -> str | None:
    """Raise ProtectedPromptError if ``text`` names a protected term, unless ``override``; then the matched term
    is returned so the caller records it in provenance (None when nothing matched)."""
    term = find_protected(text, extra_terms)
    if term is not None and not override:
        raise ProtectedPromptError(term, text)
    return term
