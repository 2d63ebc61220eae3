"""Value vocabularies of the synthetic identity benchmark.

Three families that never share a word, so an evaluator can tell which one an answer word comes
from: visible (non-identifying) attributes that appear in captions, identity features that are
only drawn (never written), and private facts plus names that only the identity questions reveal.
``vocabulary_conflicts()`` checks that promise (also substring-wise, for substring matchers).
"""

from __future__ import annotations

import itertools

# --- visible, non-identifying attributes (vary per image; named in captions) -------------------
SHIRTS: tuple[str, ...] = ("red", "blue", "green", "yellow", "orange", "purple", "pink", "white")
BACKGROUNDS: tuple[str, ...] = ("navy", "teal", "lime", "maroon", "lavender", "gray", "cyan", "olive")
HATS: tuple[str, ...] = ("none", "cap", "beanie", "crown")
GLASSES: tuple[str, ...] = ("none", "round", "square", "sunglasses")
OBJECTS: tuple[str, ...] = ("none", "book", "cup", "flower", "ball", "kite")

VISIBLE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shirt": SHIRTS,
    "background": BACKGROUNDS,
    "hat": HATS,
    "glasses": GLASSES,
    "object": OBJECTS,
}
ABSENT = "none"

# --- identity signature (constant per person; drawn, never written) ----------------------------
SKIN_TONES: tuple[str, ...] = ("pale", "rosy", "golden", "tan", "cocoa", "ebony")
FACE_SHAPES: tuple[str, ...] = ("oval", "broad", "narrow", "heart")
EYE_COLORS: tuple[str, ...] = ("azure", "emerald", "hazel", "amber", "violet")
HAIR_COLORS: tuple[str, ...] = ("black", "chestnut", "blonde", "ginger", "silver", "indigo", "jade", "rose")
HAIR_STYLES: tuple[str, ...] = ("cropped", "bob", "flowing", "curly", "ponytail")
MARKS: tuple[str, ...] = ("none", "beard", "moustache", "goatee", "birthmark")

IDENTITY_FEATURES: dict[str, tuple[str, ...]] = {
    "skin": SKIN_TONES,
    "face_shape": FACE_SHAPES,
    "eye_color": EYE_COLORS,
    "hair_color": HAIR_COLORS,
    "hair_style": HAIR_STYLES,
    "mark": MARKS,
}
# Features that sunglasses can hide; the others stay visible under any hat or glasses.
HIDEABLE_FEATURES: tuple[str, ...] = ("eye_color",)

# --- private facts -----------------------------------------------------------------------------
FACT_KEYS: tuple[str, ...] = ("occupation", "birthplace", "employer", "birth_year", "hobby")

OCCUPATIONS: tuple[str, ...] = (
    "baker", "pilot", "surgeon", "architect", "plumber", "librarian", "chemist", "jeweler",
    "sculptor", "veterinarian", "florist", "geologist", "translator", "carpenter", "dentist",
    "economist", "firefighter", "journalist", "locksmith", "mechanic", "nurse", "optician",
    "pharmacist", "photographer", "tailor", "violinist", "welder", "zoologist", "astronomer",
    "beekeeper",
)  # fmt: skip
BIRTHPLACES: tuple[str, ...] = (
    "Valdmora", "Kestrova", "Brindlemere", "Ostravel", "Quellport", "Thornhaven", "Eldergate",
    "Sundquay", "Varnholm", "Lyssandra", "Corvale", "Duskmere", "Frostvik", "Glimmerford",
    "Ironwater", "Kelvarin", "Lorwyn", "Mistrelle", "Northwold", "Quarrydale", "Rivenholt",
    "Saltmarsh", "Tidewell", "Umbraval", "Westreach", "Yarrowby", "Zephyrine", "Hollowmere",
    "Pellucia", "Junipa",
)  # fmt: skip
EMPLOYERS: tuple[str, ...] = (
    "Nordcorp", "Zentrix", "Orvalon", "Brightmill", "Quantiva", "Helixor", "Vantora", "Lumetric",
    "Corbelle", "Stratmore", "Kyrolabs", "Pinnacor", "Solvexa", "Trivanta", "Auremis", "Dynacrest",
    "Ecovault", "Ferrotek", "Glacium", "Maxwelt", "Nexora", "Omnitide", "Polarith", "Quorvex",
    "Radiantis", "Syntheon", "Terravox", "Ultrion", "Veridyne", "Xylotech",
)  # fmt: skip
BIRTH_YEARS: tuple[str, ...] = tuple(str(y) for y in range(1950, 2000))
HOBBIES: tuple[str, ...] = (
    "chess", "kayaking", "gardening", "birdwatching", "knitting", "fencing", "archery", "surfing",
    "origami", "juggling", "sailing", "climbing", "skating", "calligraphy", "falconry", "fishing",
    "painting", "cycling", "rowing", "hiking", "snorkeling", "woodcarving", "quilting", "stargazing",
    "dancing", "bowling", "yoga", "embroidery", "geocaching", "skiing",
)  # fmt: skip

FACT_VOCAB: dict[str, tuple[str, ...]] = {
    "occupation": OCCUPATIONS,
    "birthplace": BIRTHPLACES,
    "employer": EMPLOYERS,
    "birth_year": BIRTH_YEARS,
    "hobby": HOBBIES,
}

# --- names (first x last: 4096 unique fictitious full names) -----------------------------------
FIRST_NAMES: tuple[str, ...] = (
    "Alvey", "Brisca", "Cadmir", "Delvin", "Eirwen", "Faustin", "Galwyn", "Hesper", "Idrena",
    "Jorvik", "Kesslyn", "Lunetta", "Marlow", "Nerissa", "Orvyn", "Perrin", "Quillan", "Ravenna",
    "Sabeline", "Tobiah", "Ulrica", "Vesna", "Wendell", "Xanthe", "Yorick", "Zephra", "Ambrin",
    "Bastian", "Corisande", "Darvell", "Emrys", "Fenna", "Gideon", "Hollis", "Ingrith", "Jessamy",
    "Kaelor", "Linnea", "Mordecai", "Nolwen", "Osric", "Pelagia", "Quintus", "Rhoswen", "Severin",
    "Tamsin", "Ursel", "Valdis", "Wrenna", "Ximena", "Yestin", "Zorah", "Aurelio", "Benedek",
    "Cyrilla", "Dagny", "Evander", "Florentin", "Greer", "Hildur", "Isaura", "Jovan", "Kirsi",
    "Leofric",
)  # fmt: skip
LAST_NAMES: tuple[str, ...] = (
    "Ashgrove", "Brennick", "Caldmoor", "Dunmarrow", "Everly", "Falkenrath", "Grimsby", "Holloway",
    "Ingleby", "Jarrow", "Kingsolver", "Lockhart", "Merriwether", "Northcott", "Oakhurst",
    "Pemberly", "Quarrington", "Ravensworth", "Summerfield", "Thistlewood", "Underhill",
    "Vantreece", "Whitcombe", "Yardley", "Zabrisky", "Abernathy", "Birchall", "Crowther",
    "Dalgleish", "Eastwick", "Fenwick", "Gorringe", "Hartigan", "Iverson", "Jessop", "Kilbride",
    "Langridge", "Mallory", "Nethercott", "Ormsby", "Pickering", "Quenell", "Rutherford", "Selwyn",
    "Trevelyan", "Upshaw", "Verhoeven", "Wolstenholme", "Yelverton", "Axworthy", "Cottingham",
    "Drummond", "Ellerby", "Fothergill", "Gosling", "Heathcote", "Ibbotson", "Jellicoe", "Kenward",
    "Lindqvist", "Mossop", "Nugent", "Pennock", "Sackville",
)  # fmt: skip


def _families() -> dict[str, list[str]]:
    fams: dict[str, list[str]] = {f"visible.{k}": list(v) for k, v in VISIBLE_ATTRIBUTES.items()}
    fams.update({f"identity.{k}": list(v) for k, v in IDENTITY_FEATURES.items()})
    fams.update({f"fact.{k}": list(v) for k, v in FACT_VOCAB.items()})
    fams["name.first"] = list(FIRST_NAMES)
    fams["name.last"] = list(LAST_NAMES)
    return fams


def vocabulary_conflicts() -> list[str]:
    """Problems with the vocabularies: duplicates, or a word of one family contained in another's.

    ``none`` (the absent value shared by several families) is exempt. Empty list = clean.
    """
    problems: list[str] = []
    fams = _families()
    for fam, vals in fams.items():
        if len(set(vals)) != len(vals):
            problems.append(f"{fam}: duplicate values")
    entries = [(fam, v.lower()) for fam, vals in fams.items() for v in vals if v != ABSENT]
    for (fa, a), (fb, b) in itertools.permutations(entries, 2):
        if a != b and a in b:
            problems.append(f"{fa}:{a!r} is contained in {fb}:{b!r}")
        elif a == b and fa < fb:
            problems.append(f"{a!r} is in both {fa} and {fb}")
    return problems
