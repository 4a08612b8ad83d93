"""Captions from templates with synonyms, tagged `word/POS` by a small built-in lexicon."""
from __future__ import annotations

from cmdm.data.synthetic.body import SIDE_NAMES
from cmdm.data.synthetic.channels import FPS

# Every caption names what distinguishes the motion: the action (its family verb), and where
# relevant direction, speed, limb, object and count. Tokens follow HumanML3D's texts: the
# caption lowercased, punctuation dropped, each word as `word/POS` with spaCy's coarse tags,
# nouns and verbs lemmatised (except "left", as HumanML3D does).

FAMILIES = ("walk", "run", "jump", "turn", "sit", "stand", "wave", "kick", "squat",
            "sidestep", "raise", "climb", "clap", "bow", "punch", "pick")
# Lemmas of which every caption of a family contains at least one.
FAMILY_VERBS = {
    "walk": ("walk", "stroll", "stride"), "run": ("run", "jog", "sprint"),
    "jump": ("jump", "hop", "leap"), "turn": ("turn", "rotate", "pivot"), "sit": ("sit",),
    "stand": ("stand", "get", "rise"), "wave": ("wave",), "kick": ("kick",),
    "squat": ("squat", "crouch"), "sidestep": ("step", "sidestep", "shuffle"),
    "raise": ("raise", "lift"), "climb": ("climb", "step"), "clap": ("clap",),
    "bow": ("bow", "bend"), "punch": ("punch",), "pick": ("pick", "grab"),
}
SUBJECTS = [("a person", "his"), ("a man", "his"), ("the man", "his"), ("someone", "their"),
            ("a woman", "her"), ("the person", "their"), ("a person", "their"),
            ("the woman", "her"), ("a figure", "its")]
_TIMES = {1: "once", 2: "twice", 3: "three times", 4: "four times", 5: "five times",
          6: "six times"}
_NUMBER = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight",
           9: "nine", 10: "ten", 11: "eleven", 12: "twelve"}


def _phrases(family, p):
    """Verb phrases (third person, {pos} = possessive) describing one action."""
    S = SIDE_NAMES[p["side"]] if "side" in p else None
    if family in ("walk", "run"):
        turn_side = "left" if p.get("turn", 0) > 0 else "right"
        clock = "counterclockwise" if p.get("turn", 0) > 0 else "clockwise"
        mode = p["mode"]
        if mode == "forward":
            dirs = ["forward", "forwards", "straight ahead", "ahead", "straight forward",
                    "forward in a straight line"]
        elif mode == "backward":
            dirs = ["backward", "backwards", "backward in a straight line"]
        elif mode in ("left", "right"):
            dirs = [f"to the {turn_side}", f"toward the {turn_side}",
                    f"forward and to the {turn_side}", f"to {{pos}} {turn_side}",
                    f"forward while turning {turn_side}"]
        else:
            dirs = [f"in a curve to the {turn_side}", f"along a curve to the {turn_side}",
                    f"in an arc to the {turn_side}", f"{clock} in a curve"]
            if abs(p["turn"]) > 2.5:
                dirs += [f"in a half circle to the {turn_side}"]
        if family == "walk":
            slow, fast = p["speed"] < 0.9, p["speed"] > 1.35
            verbs = ["walks"] + (["strolls"] if slow and mode != "backward" else []) + \
                (["strides"] if fast and mode != "backward" else [])
            pace = (["slowly", "at a slow pace", "leisurely"] if slow else
                    ["quickly", "briskly", "fast", "at a fast pace"] if fast else
                    ["", "at a normal pace", "steadily"])
        else:
            verbs = ["runs"] + (["jogs"] if p["speed"] < 2.5 else []) + \
                (["sprints"] if p["speed"] > 3.1 else [])
            pace = (["slowly", "lightly"] if p["speed"] < 2.5 else
                    ["quickly", "fast", "at full speed"] if p["speed"] > 3.1 else ["", ""])
        out = []
        for v in verbs:
            for d in dirs:
                out += [f"{v} {d}", f"{v} {d} {pace[len(out) % len(pace)]}"]
        steps = p["steps"]
        out += [f"{verbs[0]} {_NUMBER[min(steps, 12)]} steps {dirs[0]}"]
        return [" ".join(o.split()) for o in out]
    if family == "jump":
        high, small = p["height"] > 0.3, p["height"] < 0.16
        times = f" {_TIMES[p['count']]}" if p["count"] > 1 else ""
        if p["distance"] == 0:
            out = ["jumps in place", "jumps up", "hops in place", "jumps straight up",
                   "jumps on the spot"]
            if p["count"] > 1:
                out += ["jumps up and down"]
        else:
            out = ["jumps forward", "jumps ahead", "hops forward" if p["distance"] < 0.6 else
                   "leaps forward", "jumps forward with both feet"]
        if high:
            out = [o + " high" if o.endswith("place") or o.endswith("up") else o for o in out]
            out += ["jumps high" + (" forward" if p["distance"] else "")]
        if small:
            out += ["does a small jump" + (" forward" if p["distance"] else "")]
        return [o + times for o in out]
    if family == "turn":
        side = "left" if p["angle"] > 0 else "right"
        clock = "counterclockwise" if p["angle"] > 0 else "clockwise"
        a = abs(p["angle"])
        out = [f"turns {side}", f"turns to the {side}", f"turns to {{pos}} {side}",
               f"rotates to the {side}", f"pivots to the {side}", f"turns {clock} to the {side}"]
        if a > 2.6:
            out = [f"turns around to the {side}", f"turns all the way around to the {side}",
                   f"turns around to {{pos}} {side}", f"pivots around to the {side}"]
        elif 1.3 < a < 1.85:
            out += [f"turns ninety degrees to the {side}", f"turns ninety degrees {side}"]
        elif a < 1.0:
            out = [f"turns slightly to the {side}", f"turns a little to the {side}",
                   f"turns slightly {side}", f"rotates slightly to the {side}"]
        return out
    if family == "sit":
        out = ["sits down on a chair", "sits down on the chair", "sits on a chair",
               "sits down onto a chair", "sits down in a chair"]
        if p["duration"] > 1.7:
            out += ["slowly sits down on a chair", "sits down slowly on the chair"]
        if p["seat"] < 0.43:
            out += ["sits down on a low chair"]
        return out
    if family == "stand":
        out = ["stands up from a chair", "stands up from the chair", "gets up from a chair",
               "rises from the chair", "gets up off the chair", "stands up out of a chair"]
        if p["duration"] > 1.7:
            out += ["slowly stands up from the chair"]
        return out
    if family == "wave":
        times = _TIMES[p["times"]]
        out = [f"waves {{pos}} {S} hand", f"waves with {{pos}} {S} hand", f"waves the {S} hand",
               f"raises {{pos}} {S} hand and waves", f"waves {{pos}} {S} arm",
               f"waves {{pos}} {S} hand {times}", f"waves with the {S} hand {times}"]
        if p["height"] > 2.0:
            out += [f"waves {{pos}} {S} hand above {{pos}} head"]
        if p["amp"] > 0.45:
            out += [f"waves {{pos}} {S} arm widely"]
        elif p["amp"] < 0.32:
            out += [f"gently waves {{pos}} {S} hand"]
        return out
    if family == "kick":
        h = "high" if p["angle"] > 1.25 else "low" if p["angle"] < 0.85 else ""
        times = f" {_TIMES[p['count']]}" if p["count"] > 1 else ""
        out = [f"kicks with {{pos}} {S} leg", f"kicks {{pos}} {S} leg forward",
               f"kicks forward with the {S} foot", f"kicks with the {S} foot",
               f"kicks {{pos}} {S} foot out in front"]
        if h:
            out += [f"does a {h} kick with {{pos}} {S} leg", f"kicks {h} with the {S} leg"]
        return [o + times for o in out]
    if family == "squat":
        n, deep = p["reps"], p["depth"] > 0.36
        shallow = p["depth"] < 0.25
        adj = "deep " if deep else "shallow " if shallow else ""
        if n == 1:
            out = ["squats down", "squats down and stands back up", "crouches down",
                   f"does a {adj}squat", "squats once"]
        else:
            out = [f"squats {_TIMES[n]}", f"does {_NUMBER[n]} {adj}squats",
                   f"squats down and up {_TIMES[n]}", f"crouches down {_TIMES[n]}"]
        if deep:
            out += ["squats down deeply" + (f" {_TIMES[n]}" if n > 1 else "")]
        return out
    if family == "sidestep":
        n = p["steps"]
        count = "a step" if n == 1 else f"{_NUMBER[n]} steps"
        times = f" {_TIMES[n]}" if n > 1 else ""
        return [f"steps to the {S}" + times, f"steps sideways to the {S}" + times,
                f"takes {count} to the {S}", f"sidesteps to the {S}" + times,
                f"takes {count} sideways to the {S}", f"shuffles sideways to the {S}"]
    if family == "raise":
        which, plane, a = p["which"], p["plane"], p["angle"]
        obj = (["both arms", "{pos} arms", "both {pos} arms"] if which == "both" else
               [f"{{pos}} {which} arm", f"the {which} arm", f"{{pos}} {which} hand"])
        if a > 2.5:
            where = ["above {pos} head", "up over {pos} head", "high above {pos} head"]
        elif a < 1.75:
            where = ["to shoulder height", "up to shoulder level"]
        else:
            where = ["up", "up high"]
        if plane == "forward":
            where = [w + " in front of {pos} body" if w in ("to shoulder height",) else w
                     for w in where] + (["forward", "out in front"] if a < 1.75 else [])
        else:
            where += ["out to the side" + ("s" if which == "both" else "")] if a < 2.5 else []
        return [f"{v} {o} {w}" for v in ("raises", "lifts") for o in obj for w in where]
    if family == "climb":
        h = "low " if p["height"] < 0.2 else "high " if p["height"] > 0.32 else ""
        lead = SIDE_NAMES[p["lead"]]
        return [f"climbs onto a {h}step", f"steps up onto a {h}box", f"climbs up onto a {h}box",
                f"steps up onto a {h}platform", f"climbs onto a {h}platform",
                f"steps up onto a {h}step with {{pos}} {lead} foot first",
                f"steps up onto a {h}box leading with the {lead} foot"]
    if family == "clap":
        times = _TIMES[p["times"]]
        return [f"claps {{pos}} hands {times}", f"claps {times}", "claps {pos} hands",
                f"claps {{pos}} hands together {times}", "claps in front of {pos} chest",
                f"claps {times} in front of {{pos}} chest"]
    if family == "bow":
        deep, slight = p["depth"] > 0.95, p["depth"] < 0.6
        out = ["bows", "bows forward", "takes a bow", "bends forward at the waist",
               "bows and stands back up"]
        if deep:
            out += ["bows deeply", "takes a deep bow", "bends far forward at the waist"]
        if slight:
            out += ["bows slightly", "bows a little", "takes a small bow"]
        return out
    if family == "punch":
        n = p["count"]
        times = f" {_TIMES[n]}" if n > 1 else ""
        out = [f"punches forward with {{pos}} {S} fist" + times,
               f"punches with {{pos}} {S} hand" + times,
               f"punches the air with {{pos}} {S} fist" + times,
               f"punches straight ahead with the {S} arm" + times]
        out += [f"throws a punch with {{pos}} {S} arm"] if n == 1 else \
            [f"throws {_NUMBER[n]} punches with {{pos}} {S} hand"]
        return out
    if family == "pick":
        return [f"picks up something from the table with {{pos}} {S} hand",
                f"picks up an object from the table with the {S} hand",
                f"reaches forward and picks up an item from the table with {{pos}} {S} hand",
                f"grabs something from the table with {{pos}} {S} hand",
                f"picks something up off the table with {{pos}} {S} hand",
                f"leans over and picks up a cup from the table with the {S} hand"]
    raise ValueError(family)


_CONNECT = [" then ", " and then ", ", then ", ", and then ", " and ", ", after that "]


def make_captions(actions, rng, n=3):
    """n whole-clip captions (varied subject, synonyms and connectors), plus one caption per
    action of a multi-action clip with its time span: [(caption, start_s, end_s)]."""
    whole = []
    for _ in range(20 * n):
        subj, pos = SUBJECTS[rng.integers(len(SUBJECTS))]
        parts = []
        for a in actions:
            opts = _phrases(a["family"], a["params"])
            parts.append(opts[rng.integers(len(opts))].replace("{pos}", pos))
        text = subj
        for i, part in enumerate(parts):
            if i == 0:
                text += (" first " if len(parts) > 1 and rng.random() < 0.15 else " ") + part
            else:
                text += _CONNECT[rng.integers(len(_CONNECT))] + part
        text += "."
        if text not in whole:
            whole.append(text)
        if len(whole) == n:
            break
    lines = [(t, 0.0, 0.0) for t in whole]
    if len(actions) > 1:
        for a in actions:
            subj, pos = SUBJECTS[rng.integers(len(SUBJECTS))]
            opts = _phrases(a["family"], a["params"])
            part = opts[rng.integers(len(opts))].replace("{pos}", pos)
            lines.append((f"{subj} {part}.", a["start"] / FPS, a["end"] / FPS))
    return lines


# Built-in lexicon: surface word -> (lemma, coarse POS). Words listed under both NOUN and VERB
# are told apart by the previous word (after a determiner, number or adjective: a noun);
# "left"/"right" and a few adjective/adverb words likewise by their neighbours.
_LEXICON_TEXT = """
DET: a an the his her their its both each
PRON: someone something it that
NOUN: person man woman figure hand hands=hand arm arms=arm leg legs=leg foot feet=foot
  chair table step steps=step box platform fist head chest waist body shoulder level height
  side sides=side squat squats=squat kick kicks=kick punch punches=punch bow item object cup
  time times=time degree degrees=degree curve arc line circle pace spot air speed front
  way jump place
VERB: walks=walk strolls=stroll strides=stride runs=run jogs=jog sprints=sprint jumps=jump
  hops=hop leaps=leap turns=turn turning=turn rotates=rotate pivots=pivot sits=sit
  stands=stand gets=get rises=rise waves=wave raises=raise lifts=lift kicks=kick
  squats=squat crouches=crouch steps=step sidesteps=sidestep shuffles=shuffle climbs=climb
  claps=clap bows=bow bends=bend punches=punch throws=throw picks=pick grabs=grab
  reaches=reach does=do takes=take leans=lean leading=lead
ADJ: left right high low deep shallow small slow fast normal straight full half little
  first
ADV: quickly slowly briskly leisurely gently widely lightly steadily deeply slightly then
  forward forwards backward backwards ahead sideways twice once around counterclockwise
  clockwise together far back all high fast straight first
ADP: on onto in into to toward from with at of over above along off out down up before
  after
NUM: two three four five six seven eight nine ten eleven twelve ninety
CCONJ: and
SCONJ: while
"""
_LEXICON, _DUAL = {}, set()
for _line in _LEXICON_TEXT.replace("\n  ", " ").strip().splitlines():
    _pos, _words = _line.split(":", 1)
    for _w in _words.split():
        _surface, _, _lemma = _w.partition("=")
        if _surface in _LEXICON and _LEXICON[_surface][1] != _pos:
            _DUAL.add(_surface)
        _LEXICON.setdefault(_surface, (_lemma or _surface, _pos))
_NOUNISH = {"DET", "NUM", "ADJ"}
_BODY_NOUNS = {"hand", "hands", "arm", "arms", "leg", "legs", "foot", "feet", "fist", "side"}


def tag_caption(caption: str) -> str:
    """'a person walks forward.' -> 'a/DET person/NOUN walk/VERB forward/ADV'."""
    words = [w.strip(".,;:!?") for w in caption.lower().split()]
    words = [w for w in words if w.isalpha()]
    tags = []
    for i, w in enumerate(words):
        lemma, pos = _LEXICON[w]                      # KeyError = a word missing above
        prev = tags[-1][1] if tags else None
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if w in ("left", "right"):
            pos = "ADJ" if nxt in _BODY_NOUNS else "NOUN" if prev == "DET" else "ADV"
        elif w in _DUAL:
            if pos in ("NOUN", "VERB"):
                noun = prev in _NOUNISH
                pos = "NOUN" if noun else "VERB"
                lemma = _LEXICON[w][0]
            else:                                     # ADJ or ADV
                pos = "ADJ" if prev == "DET" or _LEXICON.get(nxt, ("", ""))[1] == "NOUN" \
                    else "ADV"
        if pos not in ("NOUN", "VERB"):
            lemma = w
        tags.append((lemma, pos))
    return " ".join(f"{lemma}/{pos}" for lemma, pos in tags)
