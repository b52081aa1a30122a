"""`builtin:everyday_cloze`: 208 everyday English sentences cut before their last word ("The cat sat on the ___").

Source and provenance: the sentences are written for this project as data in this file (52 everyday scenes, each
said four ways), so they are public domain by construction and need no download. A public-domain book was the
other candidate (The Verdict, tiny Shakespeare under ../shared/data), but its sentences are literary, not
everyday, and the set must exist where ../shared does not.

Distractors: the 52 scenes form 13 groups of four. An item's four choices are the answers of its group, and each
answer is gold in exactly the four items of its own scene and a distractor in the twelve of the other three. So
every choice word occurs equally often in the set, and any scorer that looks at the word alone (word frequencies,
lengths, a unigram model) gives the same ranking to the same four words in every item of a group: it scores
exactly 1 in 4 (tested). Only the context can lift a model above chance. Groups are chosen so that no distractor
also fits another scene of its group ("The cat sat on the bed" would be a fair answer: mat and bed are in
different groups).

The paraphrases give the feedback demonstration (`recipes/feedback-demo`) held-out prompts: it corrects the
model on each scene's first wording and measures the others.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .data import ChoiceItem, ChoiceTask
from .models import EvalInputError

NAME = "everyday_cloze"
PROVENANCE = ("written for llm_recipes as data in llm_recipes/evaluation/everyday.py (public domain by "
              "construction); 52 everyday scenes x 4 wordings, distractors = the other answers of the scene's group")
CHOICES = 4


@dataclass(frozen=True)
class Scene:
    answer: str
    wordings: tuple[str, ...]  # each ends right before the answer


def _scene(answer: str, *wordings: str) -> Scene:
    return Scene(answer, wordings)


# 13 groups of 4 scenes; within a group no answer fits another scene's sentences
GROUPS: tuple[tuple[Scene, ...], ...] = (
    (_scene("mat", "The cat sat on the", "The cat was sitting on the", "Our old cat likes to sit on the",
            "Every morning the cat sits on the"),
     _scene("ice", "Water freezes into", "When water gets very cold it turns into",
            "The lake froze and was covered in thick", "In winter the pond is covered with a sheet of"),
     _scene("car", "He drove to work in his", "She parked her", "The mechanic repaired the engine of my",
            "On Sunday he washed and waxed his"),
     _scene("pen", "She signed her name with a", "He wrote the address in ink with a",
            "The ink ran out of my", "The student filled in the form with a blue")),
    (_scene("bed", "At night I sleep in my", "When I am tired I go to", "The sleepy child climbed into",
            "After a long day he went straight to"),
     _scene("bus", "The children waited at the stop for the school", "She missed the number nine",
            "He paid the fare and sat at the back of the", "The driver stopped the crowded"),
     _scene("hat", "He wore a", "On his head he wore a tall", "She put on her straw sun",
            "The magician pulled a rabbit out of his"),
     _scene("sea", "The ship sailed across the", "The river flows into the", "Sailors spend months at",
            "We swam in the salty")),
    (_scene("east", "The sun rises in the", "Every morning the sun comes up in the",
            "At dawn the sun appears in the", "The sun always rises in the"),
     _scene("milk", "Cows give us", "The farmer milks the cow to get fresh", "The baby drank a bottle of warm",
            "She poured cereal into a bowl and added cold"),
     _scene("bone", "The dog chewed on a", "The happy dog buried its", "Our puppy gnawed on a big",
            "The dog ran off with a juicy"),
     _scene("eggs", "Hens lay", "Every morning the chickens laid fresh", "For breakfast he fried two",
            "She cracked the shells of the")),
    (_scene("west", "The sun sets in the", "Every evening the sun goes down in the", "At dusk the sun sinks in the",
            "The sun always sets in the"),
     _scene("keys", "I unlocked the door with my", "She opened the front door with her",
            "He could not start the car without his", "I looked everywhere for my lost house"),
     _scene("book", "She sat down to read a", "At the library he borrowed a", "The author wrote a new",
            "Before bed I like to read a good"),
     _scene("star", "Twinkle, twinkle, little", "The sun is a", "The astronomer discovered a new",
            "Make a wish on a shooting")),
    (_scene("fire", "Smoke rose from the", "The firefighters put out the", "We warmed our hands by the",
            "The logs burned in the crackling"),
     _scene("snow", "In winter the ground is covered with", "The children threw balls of",
            "The mountain tops were white with", "The children built a man out of"),
     _scene("moon", "The wolf howled at the", "The astronauts landed on the",
            "The night sky was lit by a bright full", "At night the stars shine around the"),
     _scene("door", "Somebody knocked on the", "Please knock before you open the",
            "He rang the bell and waited at the front", "She locked the front")),
    (_scene("rain", "Dark clouds mean it will soon", "Take an umbrella because it might",
            "The farmers prayed for", "After the storm the streets were wet from the"),
     _scene("ball", "The boy kicked the", "The goalkeeper caught the", "The puppy chased the bouncing",
            "The pitcher threw the"),
     _scene("cake", "We blew out the candles on the birthday", "For dessert she baked a chocolate",
            "The baker iced the wedding", "Happy birthday, let us cut the"),
     _scene("nest", "The bird built a", "The eggs were safe in the bird's", "Baby birds wait for food in the",
            "High in the tree the robin made a")),
    (_scene("soap", "Wash your hands with", "She washed her hands with warm water and",
            "The bubbles in the bath came from the", "He scrubbed the dirty shirt with a bar of"),
     _scene("tail", "The dog wagged its", "The monkey hung by its", "The puppy chased its own",
            "The peacock spread its colourful"),
     _scene("sand", "The beach is covered with soft", "The children built a castle out of",
            "The hourglass was filled with", "The desert is full of"),
     _scene("bank", "He kept his money in the", "She deposited the cheque at the",
            "I need to withdraw cash from the", "The robbers broke into the vault of the")),
    (_scene("honey", "Bees make", "The bees in the hive produce sweet", "Busy bees turn nectar into",
            "The bear stuck its paw into the hive to get the"),
     _scene("bread", "The baker baked fresh", "He made a sandwich with two slices of", "We bought a loaf of",
            "She fed the ducks crumbs of"),
     _scene("water", "When I am thirsty I drink", "Fish swim in", "She filled the glass with cold",
            "Plants need sunlight and"),
     _scene("grass", "The cows grazed on the", "He mowed the", "The sign in the park said keep off the",
            "The football field was covered with green")),
    (_scene("apple", "She picked a red", "He took a bite of the crunchy", "The teacher was given a shiny red",
            "The fruit bowl held a banana and an"),
     _scene("piano", "She played a tune on the", "He practised his scales on the", "The pianist sat down at the",
            "The music teacher tuned the old"),
     _scene("shoes", "She tied the laces of her", "Before going out he put on his", "The cobbler mended my",
            "Wipe the mud off your"),
     _scene("clock", "He checked the time on the kitchen", "Tick tock went the", "The alarm",
            "The hands of the")),
    (_scene("phone", "She answered the ringing", "He called his mother on the", "I sent a text message from my",
            "Please switch off your mobile"),
     _scene("night", "The sun goes down and day turns into", "Owls hunt at", "The stars come out at",
            "We sleep during the"),
     _scene("spoon", "She stirred her tea with a", "He ate his soup with a", "The baby was fed with a small",
            "He ate the cereal with a"),
     _scene("knife", "He cut the bread with a", "She sliced the cheese with a sharp", "The chef sharpened his",
            "The butcher chopped the meat with a big")),
    (_scene("teeth", "I brush my", "After breakfast she brushed her", "The dentist checked my",
            "Use a toothbrush to clean your"),
     _scene("coffee", "Every morning I drink a cup of", "He brewed a pot of", "She ordered a cup of black",
            "The cafe smelled of fresh"),
     _scene("train", "The passengers waited on the platform for the", "He bought a ticket and boarded the",
            "The steam engine pulled a long", "The railway station was busy as the"),
     _scene("wings", "The bird flapped its", "The butterfly has colourful", "The eagle spread its",
            "The bee buzzed its tiny")),
    (_scene("school", "The children go to", "Every weekday the kids walk to", "The teacher works at the local",
            "After the summer holidays the children went back to"),
     _scene("doctor", "When you are sick you go to the", "He had a fever, so he saw a",
            "She made an appointment with the", "The nurse handed the thermometer to the"),
     _scene("garden", "She grew tomatoes in her", "He planted flowers in the", "The gardener watered the",
            "Roses bloomed in the"),
     _scene("leaves", "In autumn the trees lose their", "The wind blew the brown", "He raked up the fallen",
            "Caterpillars munch on green")),
    (_scene("umbrella", "It is raining, so take an", "When it rains I open my",
            "She kept dry in the rain under her", "He shook the rain off his folded"),
     _scene("kitchen", "She cooked dinner in the", "The fridge and the oven are in the",
            "He washed the dishes in the", "The smell of baking came from the"),
     _scene("letter", "She wrote a", "The postman delivered a", "He sealed the envelope and posted the",
            "I opened the envelope and read the"),
     _scene("cheese", "Mice love to eat", "The mouse nibbled a piece of", "Pizza is topped with tomato and",
            "Cheddar is a kind of")),
)


def scene_items(scene_wordings: dict[str, list[str]] | None = None, seed: int = 0) -> list[tuple[Scene, str,
                                                                                               ChoiceItem]]:
    """(scene, wording, item) for every wording of every scene, or for the wordings given per answer.

    The order of the four choices is shuffled per item with a fixed seed, so the gold is not always in one
    place (a model biased towards a position scores chance too)."""
    rng = random.Random(seed)
    rows = []
    for group in GROUPS:
        answers = [scene.answer for scene in group]
        for scene in group:
            wordings = scene.wordings if scene_wordings is None else scene_wordings.get(scene.answer, [])
            for wording in wordings:
                choices = answers[:]
                rng.shuffle(choices)
                rows.append((scene, wording, ChoiceItem(context=wording, choices=[" " + c for c in choices],
                                                        gold=choices.index(scene.answer),
                                                        lengths=[len(c) for c in choices])))
    return rows


def everyday_task(spec: str, max_items: int | None = None) -> ChoiceTask:
    """`builtin:everyday_cloze` (or `name=builtin:everyday_cloze`): all 208 items, or the first max_items."""
    name, source = spec.split("=", 1) if "=" in spec.split(":", 1)[0] else (NAME, spec)
    if source != f"builtin:{NAME}":
        raise EvalInputError(f"choice task {spec!r}: expected builtin:{NAME}")
    items = [item for _, _, item in scene_items()]
    return ChoiceTask(name=name, source=source, layout="cloze", items=items[:max_items] if max_items else items)


def group_of(answer: str) -> tuple[Scene, ...]:
    """The group of four scenes whose answers are the choices for `answer`'s items."""
    for group in GROUPS:
        if any(scene.answer == answer for scene in group):
            return group
    raise EvalInputError(f"{answer!r} is not the answer of an everyday scene; expected one of "
                         f"{', '.join(s.answer for g in GROUPS for s in g)}")
