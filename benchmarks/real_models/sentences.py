"""English sentences for calibrating and evaluating the MiniLM sentence-embedding model.

`sentences()` returns the same ~300 unique sentences, in the same order, on every call: a few
written out in full, the rest built from per-topic phrase lists with a seeded generator. They
cover 14 topics and run from 5 to 40 words, so that the calibration set sees short and long
inputs (padded to one fixed length by the tokenizer) and a varied vocabulary.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MIN_WORDS = 5
MAX_WORDS = 40
SEED = 20240611


@dataclass(frozen=True)
class Topic:
    """Phrase lists of one topic; a sentence joins a subject, an action and optional extras."""

    subjects: tuple[str, ...]
    actions: tuple[str, ...]
    places: tuple[str, ...]
    times: tuple[str, ...]
    reasons: tuple[str, ...]
    remarks: tuple[str, ...]


FIXED = (
    "The train was late again this morning.",
    "Can you send me the report before lunch?",
    "It rained all weekend, so we stayed inside and played board games with the kids.",
    "Please remember to water the plants while I am away.",
    "The museum is closed on Mondays.",
    "She finally finished the marathon in just under four hours.",
    "Our flight to Lisbon was cancelled because of a strike by air traffic controllers.",
    "I think the new phone is too expensive for what it offers.",
    "He forgot his umbrella at the restaurant last night.",
    "Do you know where the nearest pharmacy is?",
    "The committee will announce its decision at the end of the month.",
    "Most of the snow melted after two warm days.",
    "They adopted a small grey dog from the animal shelter.",
    "The printer on the third floor is out of paper again.",
    "My sister is learning to play the cello at the age of forty.",
    "Water boils at a lower temperature at high altitude.",
    "The quarterly results were better than most analysts had expected.",
    "We should leave early to avoid the traffic on the bridge.",
    "How many languages are spoken in India?",
    "The old lighthouse has been turned into a small hotel with six rooms.",
    "I could not sleep because the neighbours were having a party until three in the morning.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "A sudden power cut left the whole street in darkness for an hour.",
    "The children built a sandcastle and watched the tide wash it away.",
    "Vaccines train the immune system to recognise a virus without causing the disease.",
    "The library has extended its opening hours during the exam period.",
    "Thank you for your patience while we look into the problem with your order.",
    "He has been working on the same novel for nearly ten years.",
    "The bakery on the corner sells the best croissants in town.",
    "Turn left at the second traffic light and the station is on your right.",
    "When we arrived at the campsite late in the evening, the wind was so strong that we gave up on the tent"
    " and slept in the car, which turned out to be surprisingly comfortable.",
    "The report explains that the new factory will create around four hundred jobs over the next five years,"
    " although local groups are still worried about traffic, noise and the loss of farmland near the village.",
)

TOPICS: dict[str, Topic] = {
    "cooking": Topic(
        subjects=("my grandmother", "the chef", "our neighbour", "a friend of mine", "Maria"),
        actions=(
            "baked a loaf of sourdough bread",
            "made a spicy tomato soup",
            "roasted vegetables with garlic and rosemary",
            "tried a new recipe for lemon cake",
            "cooked a large pot of chicken curry",
            "prepared fresh pasta by hand",
        ),
        places=(
            "in the small kitchen",
            "at the community centre",
            "for the school fair",
            "on the old gas stove",
        ),
        times=("last Sunday", "before the guests arrived", "on a rainy afternoon", "for the first time"),
        reasons=("because it was cold outside", "since everyone was hungry", "to celebrate the holiday"),
        remarks=(
            "the whole house smelled wonderful",
            "nothing was left at the end of the evening",
            "the recipe came from an old notebook",
        ),
    ),
    "travel": Topic(
        subjects=("we", "my parents", "the tourists", "a group of students", "Tom"),
        actions=(
            "took the night train to Vienna",
            "rented a car to drive along the coast",
            "visited the ancient ruins outside the city",
            "missed the last ferry to the island",
            "booked a cheap hotel near the harbour",
            "hiked to the top of the volcano",
        ),
        places=("in southern Italy", "during the summer holidays", "in the mountains", "across the border"),
        times=("last year", "in early spring", "after months of planning", "on the last day of the trip"),
        reasons=("because flights were too expensive", "to see the sunrise", "since the roads were closed"),
        remarks=(
            "the views were worth every minute",
            "the weather changed several times a day",
            "nobody spoke English in the village",
        ),
    ),
    "technology": Topic(
        subjects=("the software team", "our IT department", "the new intern", "the startup", "the engineers"),
        actions=(
            "released a security update for the mobile app",
            "moved the database to a new server",
            "fixed a bug that crashed the login page",
            "replaced the old laptops with faster models",
            "trained a small model to sort customer emails",
            "rewrote the billing system from scratch",
        ),
        places=("over the weekend", "in the data centre", "for the whole company", "at the main office"),
        times=("last night", "after a long outage", "before the product launch", "in less than a week"),
        reasons=("because users complained about slow pages", "to reduce costs", "after a data leak"),
        remarks=(
            "the system has been stable ever since",
            "a few customers still reported problems",
            "the change saved several hours of work every day",
        ),
    ),
    "sports": Topic(
        subjects=("the home team", "the young goalkeeper", "our captain", "the tennis champion", "the coach"),
        actions=(
            "scored twice in the second half",
            "won the final after a penalty shootout",
            "broke the national record in the sprint",
            "lost the match despite a strong start",
            "announced his retirement from professional cycling",
            "signed a new contract with the club",
        ),
        places=(
            "at the packed stadium",
            "in front of a home crowd",
            "at the Olympic Games",
            "on a muddy pitch",
        ),
        times=("on Saturday evening", "in the last minute", "after a long injury", "earlier this season"),
        reasons=("because the referee missed a clear foul", "despite heavy rain", "after weeks of training"),
        remarks=(
            "the fans celebrated long into the night",
            "the result surprised most of the experts",
            "the league table looks very different now",
        ),
    ),
    "health": Topic(
        subjects=("the doctor", "my father", "the nurses", "researchers at the hospital", "my colleague"),
        actions=(
            "recommended walking for thirty minutes a day",
            "started a diet with less sugar and more vegetables",
            "recovered quickly from knee surgery",
            "warned about the risks of too little sleep",
            "tested a new treatment for asthma",
            "gave up smoking after twenty years",
        ),
        places=("at the local clinic", "in the emergency ward", "during the annual check-up", "at home"),
        times=("last month", "after the flu season", "for six weeks", "during the winter"),
        reasons=(
            "because his blood pressure was too high",
            "to lower the risk of heart disease",
            "on medical advice",
        ),
        remarks=(
            "the results were encouraging",
            "the symptoms disappeared within a few days",
            "regular exercise made a clear difference",
        ),
    ),
    "finance": Topic(
        subjects=("the central bank", "the company", "investors", "my brother", "the city council"),
        actions=(
            "raised interest rates by a quarter of a point",
            "reported a sharp drop in profits",
            "sold most of their shares in the energy sector",
            "opened a savings account for his daughter",
            "cut the budget for public transport",
            "paid off the mortgage ten years early",
        ),
        places=(
            "in the last quarter",
            "on the stock market",
            "at the annual meeting",
            "in a short statement",
        ),
        times=(
            "on Thursday",
            "after a difficult year",
            "earlier than planned",
            "for the first time in a decade",
        ),
        reasons=("because inflation kept rising", "to calm the markets", "after prices fell sharply"),
        remarks=(
            "the currency gained value against the dollar",
            "many small businesses are worried",
            "experts expect more changes next year",
        ),
    ),
    "science": Topic(
        subjects=(
            "astronomers",
            "a team of biologists",
            "the physicists",
            "geologists",
            "the research group",
        ),
        actions=(
            "discovered a planet orbiting a nearby star",
            "identified a new species of frog in the rainforest",
            "measured the speed of a glacier for three years",
            "found traces of water in an old meteorite",
            "published a study on the migration of whales",
            "built a telescope that can detect faint galaxies",
        ),
        places=(
            "in a remote part of Chile",
            "in the Arctic",
            "in a university laboratory",
            "deep under the ocean",
        ),
        times=("last spring", "after decades of searching", "in a recent paper", "during a long expedition"),
        reasons=(
            "to understand how the climate is changing",
            "with support from several countries",
            "using new sensors",
        ),
        remarks=(
            "the findings could change our understanding of evolution",
            "other scientists want to repeat the experiment",
            "the data will be shared with the public",
        ),
    ),
    "history": Topic(
        subjects=("the ancient Romans", "medieval monks", "the explorers", "the king", "local farmers"),
        actions=(
            "built roads that are still used today",
            "copied books by hand for many years",
            "crossed the ocean in small wooden ships",
            "signed a peace treaty with his neighbours",
            "grew wheat and barley on the river banks",
            "defended the city walls during a long siege",
        ),
        places=(
            "in northern Europe",
            "along the river Nile",
            "on the edge of the empire",
            "in the old capital",
        ),
        times=(
            "more than two thousand years ago",
            "in the twelfth century",
            "during the war",
            "before the revolution",
        ),
        reasons=(
            "to protect their trade routes",
            "because the harvest had failed",
            "to spread their religion",
        ),
        remarks=(
            "historians still argue about the reasons",
            "many records were lost in a fire",
            "the ruins attract thousands of visitors",
        ),
    ),
    "music": Topic(
        subjects=("the band", "a young pianist", "the orchestra", "my cousin", "the singer"),
        actions=(
            "released their third album",
            "played a concert for charity",
            "recorded a song in a single afternoon",
            "performed a symphony by Beethoven",
            "wrote the lyrics on a napkin",
            "started a tour across the country",
        ),
        places=("in a small jazz club", "at the summer festival", "in an old church", "on national radio"),
        times=("last weekend", "after a long break", "at the age of sixteen", "on New Year's Eve"),
        reasons=(
            "to raise money for the hospital",
            "because the main act was ill",
            "to honour a late friend",
        ),
        remarks=(
            "the audience asked for three encores",
            "the tickets sold out in minutes",
            "critics praised the new sound",
        ),
    ),
    "nature": Topic(
        subjects=(
            "a family of foxes",
            "the migrating geese",
            "volunteers",
            "the park rangers",
            "a rare eagle",
        ),
        actions=(
            "built a den under the old oak tree",
            "flew south in a long V shape",
            "planted hundreds of trees along the river",
            "counted the seals on the beach",
            "returned to nest on the cliffs",
            "cleaned plastic from the shore",
        ),
        places=("in the national park", "near the lake", "in the wetlands", "at the edge of the forest"),
        times=(
            "every autumn",
            "early in the morning",
            "after the storm",
            "for the first time in fifty years",
        ),
        reasons=(
            "to protect the wildlife",
            "because the water level had dropped",
            "as part of a conservation project",
        ),
        remarks=(
            "the population is slowly growing again",
            "visitors are asked to keep their distance",
            "the area is now a protected reserve",
        ),
    ),
    "work": Topic(
        subjects=("my manager", "the sales team", "our office", "the new director", "Priya"),
        actions=(
            "moved the weekly meeting to Tuesday",
            "closed a large deal with a client in Japan",
            "switched to working from home on Fridays",
            "hired three new developers",
            "asked everyone to update their timesheets",
            "organised a training day on public speaking",
        ),
        places=("at headquarters", "in the conference room", "for the whole department", "by email"),
        times=("this week", "at short notice", "before the holidays", "after the merger"),
        reasons=(
            "because the deadline was moved forward",
            "to improve communication",
            "to save office space",
        ),
        remarks=(
            "most people welcomed the change",
            "the project is now back on schedule",
            "some colleagues were not happy about it",
        ),
    ),
    "education": Topic(
        subjects=("the teacher", "the students", "the university", "my son", "the school board"),
        actions=(
            "introduced a new course on climate science",
            "passed the final exam with excellent marks",
            "started learning Spanish online",
            "organised a trip to the science museum",
            "replaced the textbooks with tablets",
            "wrote an essay about the French revolution",
        ),
        places=("at the primary school", "in the evening class", "on campus", "in the library"),
        times=("this semester", "after the summer break", "in his final year", "within a month"),
        reasons=(
            "to prepare for the entrance exam",
            "because classes were overcrowded",
            "to make lessons more practical",
        ),
        remarks=(
            "the parents were very pleased",
            "attendance has improved a lot",
            "the results will be published in June",
        ),
    ),
    "city": Topic(
        subjects=("the mayor", "residents", "the transport authority", "a local artist", "the police"),
        actions=(
            "opened a new bicycle lane along the river",
            "complained about the noise from the building site",
            "extended the metro line to the airport",
            "painted a huge mural on the station wall",
            "closed the main square for a street market",
            "installed new lights in the park",
        ),
        places=("in the city centre", "in the old town", "near the central station", "on the east side"),
        times=("last Friday", "after years of delays", "during the festival", "every summer"),
        reasons=("to reduce traffic", "because of safety concerns", "to attract more visitors"),
        remarks=(
            "the streets are much quieter now",
            "rents in the area have gone up",
            "the project cost more than expected",
        ),
    ),
    "books_films": Topic(
        subjects=("the director", "my book club", "the author", "the film critic", "the studio"),
        actions=(
            "finished a documentary about deep sea fishing",
            "chose a long Russian novel for next month",
            "published a collection of short stories",
            "called the new thriller slow but beautiful",
            "announced a sequel to the animated film",
            "adapted a classic play for television",
        ),
        places=(
            "at the film festival",
            "in a small bookshop",
            "on a streaming service",
            "in the local newspaper",
        ),
        times=("last autumn", "after a long delay", "in time for Christmas", "over ten years"),
        reasons=(
            "because the first part was so popular",
            "to reach a younger audience",
            "with a very small budget",
        ),
        remarks=(
            "the ending divided the audience",
            "it became a surprise bestseller",
            "the reviews have been mostly positive",
        ),
    ),
}

QUESTIONS = (
    "What time does the {noun} open on Sundays?",
    "Is it true that the {noun} will close next year?",
    "Where can I find more information about the {noun}?",
    "Why did nobody tell us about the {noun} earlier?",
)
QUESTION_NOUNS = (
    "pharmacy",
    "swimming pool",
    "post office",
    "new bridge",
    "bakery",
    "exhibition",
    "night bus",
)


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _subject(topic: Topic, rng: random.Random) -> str:
    return rng.choice(topic.subjects)


def _short(topic: Topic, rng: random.Random) -> str:
    return _cap(f"{_subject(topic, rng)} {rng.choice(topic.actions)}.")


def _medium(topic: Topic, rng: random.Random) -> str:
    return _cap(
        f"{_subject(topic, rng)} {rng.choice(topic.actions)} {rng.choice(topic.places)} {rng.choice(topic.times)}."
    )


def _with_reason(topic: Topic, rng: random.Random) -> str:
    return _cap(
        f"{rng.choice(topic.times)}, {_subject(topic, rng)} {rng.choice(topic.actions)} {rng.choice(topic.reasons)}."
    )


def _long(topic: Topic, rng: random.Random) -> str:
    first = f"{_subject(topic, rng)} {rng.choice(topic.actions)} {rng.choice(topic.places)} {rng.choice(topic.reasons)}"
    return _cap(f"{rng.choice(topic.times)}, {first}, and {rng.choice(topic.remarks)}.")


def _remark(topic: Topic, rng: random.Random) -> str:
    return _cap(f"{rng.choice(topic.remarks)} after {_subject(topic, rng)} {rng.choice(topic.actions)}.")


def _question(topic: Topic, rng: random.Random) -> str:
    return rng.choice(QUESTIONS).format(noun=rng.choice(QUESTION_NOUNS))


BUILDERS = (_short, _medium, _with_reason, _long, _remark, _short, _medium, _long, _question)


def _word_count(sentence: str) -> int:
    return len(sentence.split())


def sentences(count: int = 300, seed: int = SEED) -> list[str]:
    """`count` unique sentences of MIN_WORDS..MAX_WORDS words; the fixed ones first, then generated."""
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()

    def add(sentence: str) -> None:
        if sentence not in seen and MIN_WORDS <= _word_count(sentence) <= MAX_WORDS:
            seen.add(sentence)
            out.append(sentence)

    for sentence in FIXED:
        add(sentence)
    topics = list(TOPICS.values())
    step = 0
    while len(out) < count:
        if step > 100 * count:
            raise RuntimeError(f"could only build {len(out)} unique sentences")
        topic = topics[step % len(topics)]
        builder = BUILDERS[(step // len(topics)) % len(BUILDERS)]
        add(builder(topic, rng))
        step += 1
    # interleave fixed and generated sentences so that calibration and evaluation both get some of each
    rng.shuffle(out)
    return out[:count]
