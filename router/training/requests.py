"""The labelled request set for task detection: real shipped text (polarity sentences, MMLU questions) wrapped
in the phrasings users write, generated multi-step arithmetic word problems, and chat requests from templates.

Why templates: no shipped data says "this request is a sentiment request"; the phrasings below are written
from how people actually ask (with typos and odd casing added by :func:`noisy`), and the held-out part uses
templates *and* sentences never seen in training, so the reported accuracy is about new phrasings too.

Length: most of it is the phrasing templates themselves, which read best in one place.
"""

from __future__ import annotations

import csv
import random
import re
from dataclasses import dataclass
from pathlib import Path

from .common import DATA_DIR, SEED, detokenize
from .polarity import split_polarity

# --- sentiment: classification requests -----------------------------------------------------------------
SENTIMENT_ASK_TEMPLATES = [
    'Is this review positive or negative? "{text}"',
    "How does this tweet feel: {text}",
    "Sentiment: {text}",
    "What is the sentiment of the following sentence?\n{text}",
    'Classify the sentiment of this movie review as positive or negative: "{text}"',
    "positive or negative? {text}",
    "Tell me if this comment is good or bad: {text}",
    "Is the following text expressing a positive or a negative opinion?\n\n{text}",
    "{text}\n\nWas that review positive or negative?",
    "Label the sentiment (positive/negative): {text}",
    "Would you say this review is favorable or unfavorable? '{text}'",
    "Detect the sentiment: {text}",
    "sentiment analysis please: {text}",
    "Does the reviewer like the movie? Review: {text}",
    "Rate the tone of this sentence as positive or negative -- {text}",
    "Analyze the sentiment of: {text}",
    'Is "{text}" a positive or negative statement?',
    "Determine whether this review is positive or negative.\nReview: {text}\nAnswer:",
    "Pos or neg? {text}",
    "What's the sentiment here: {text}",
    "Here is a customer comment: {text}\nIs the customer happy or unhappy?",
    "Please classify this text's polarity: {text}",
    "Is this a good or bad review? {text}",
    "Review: {text}\nSentiment:",
    "Thumbs up or thumbs down? {text}",
    "Did the writer like it or not? {text}",
    "Is the author happy or unhappy here: {text}",
    "{text} -- positive or negative?",
    "What's the mood of this review? {text}",
    "Quick sentiment check: {text}",
    "Is this feedback good or bad?\n{text}",
    "Classify as POSITIVE or NEGATIVE.\nText: {text}",
    "Opinion mining: is the following positive or negative? {text}",
    "how positive is this? {text}",
    "Is the tone of this comment positive or negative: {text}",
    "Does this customer sound satisfied? {text}",
    "polarity of: {text}",
    "Would you call this a favourable review? {text}",
    "Is the following sentence praise or criticism? {text}",
    "Text: {text}\nLabel (positive or negative):",
    "Tell me whether the sentiment is positive or negative.\n\n{text}",
    "Sentiment of this tweet? {text}",
    "Does the speaker feel good or bad about it? {text}",
    "Judge this review: favorable or not? {text}",
    "Is this comment a compliment or a complaint? {text}",
    "What emotion does this review express, positive or negative? {text}",
    "{text}\nsentiment?",
    "Is this user review negative? {text}",
    "Classify: {text}\nOptions: positive, negative",
    "pls tell me if this is a positive or negative review: {text}",
]
# Requests that mention reviews or sentiment but ask for generation or something else: must NOT be routed
# to the sentiment specialist (they are chat).
SENTIMENT_DECOYS = [
    "Write a positive review of this film: {text}",
    "Write a negative review of a movie like this one: {text}",
    "Rewrite this review so that it sounds positive: {text}",
    "Summarize this review in one sentence: {text}",
    "Translate this review into French: {text}",
    "Continue this review with two more sentences: {text}",
    "Write a tweet that sounds happy about the new {topic}.",
    "Compose a glowing five-star review for a {topic}.",
    "Generate three negative comments about a {topic} for my test data.",
    "Draft a reply to this customer review: {text}",
    "Explain what sentiment analysis is and how it works.",
    "What is the difference between positive and negative feedback in control systems?",
    "Make this sentence more positive: {text}",
    "Give me a list of positive words to describe a {topic}.",
    "Fix the grammar in this review: {text}",
    "Who directed the film described here? {text}",
    "Write a short story that starts with this sentence: {text}",
    "What genre is the movie described here? {text}",
    "How many words are in this sentence? {text}",
    "Extract the names mentioned in this review: {text}",
    "Turn this review into a headline: {text}",
    "Give me five adjectives that describe a great {topic}.",
    "Write a one-star review for a {topic} that lost my order.",
    "What is sentiment analysis used for in business?",
    "Which words in this review are adjectives? {text}",
    "Correct the spelling in this sentence: {text}",
    "Paraphrase this review: {text}",
    "What year do you think this film review was written? {text}",
    "Respond to this negative review politely: {text}",
    "How do I train a sentiment classifier in Python?",
    "Make a positive slogan for a {topic}.",
    "Is this sentence in English or French? {text}",
    "Convert this review to all capital letters: {text}",
    "Write a counter-argument to this review: {text}",
]
TOPICS = [
    "phone",
    "restaurant",
    "laptop",
    "hotel",
    "movie",
    "book",
    "coffee shop",
    "video game",
    "car",
    "headphones",
    "concert",
    "museum",
    "pizza place",
    "airline",
    "bike",
    "camera",
    "sofa",
    "gym",
    "podcast",
    "album",
]

# --- multiple choice / knowledge --------------------------------------------------------------------------
MC_TEMPLATES = [
    "{q}",
    "Answer the following multiple choice question.\n\n{q}",
    "{q}\nPlease pick one option.",
    "Question: {q}",
    "Which option is correct?\n{q}",
    "Help me with this quiz question:\n{q}",
    "{q}\nExplain your choice briefly.",
]

# --- chat ---------------------------------------------------------------------------------------------------
CHAT_TEMPLATES = [
    "Hi! How are you today?",
    "Can you help me write an email to my landlord about a broken {thing}?",
    "Tell me a joke about {topic}s.",
    "What are some good names for a {topic}?",
    "Write a short poem about {topic}.",
    "Explain {concept} like I'm five.",
    "Give me three tips to get better at {skill}.",
    "Translate 'good morning, my friend' into {language}.",
    "Summarize the plot of {work} in two sentences.",
    "What should I cook tonight with {food}?",
    "I'm feeling stressed about {event}. Any advice?",
    "Write a Python function that reverses a string.",
    "How do I center a div in CSS?",
    "What's the weather usually like in {place} in spring?",
    "Draft a LinkedIn post announcing my new job at a {topic} company.",
    "Can you recommend a book similar to {work}?",
    "What is the capital of {place}?",
    "Plan a 3-day trip to {place} for me.",
    "Rewrite this sentence to sound more formal: hey, can u send me the file asap",
    "Why is the sky blue?",
    "Write a haiku about {topic}.",
    "Brainstorm five startup ideas involving {concept}.",
    "What does {concept} mean?",
    "Help me prepare for a job interview as a {job}.",
    "Compare {concept} and {concept2} in a short paragraph.",
    "thx, that was helpful!",
    "Write a bedtime story about a {topic} who learns to {skill}.",
    "Convert this to bullet points: we need milk, eggs, bread and a new {thing}.",
    "Debug this: for i in range(10) print(i)",
    "Who won the world cup in 2018?",
    "I watched a {topic} documentary last night, what should I watch next?",
    "My friend says I'm too negative. How can I be more positive?",
    "What's a good way to ask my boss for feedback?",
    "How do I stay motivated when I feel unhappy at work?",
    "Can you write a thank-you note to my {job} colleague?",
    "What is the difference between {concept} and {concept2}?",
    "Suggest a name for my {topic} blog.",
    "Is it better to rent or buy a {thing}?",
    "How long should I boil an egg?",
    "Write a limerick about a {job}.",
    "What are the pros and cons of {concept}?",
    "Help me reply to a friend who didn't like my {topic} recommendation.",
    "Tell me something interesting about {place}.",
    "Recommend three movies for a rainy evening.",
    "How can I improve the reviews of my {topic} business?",
    "I feel great today! Any ideas for a fun weekend in {place}?",
    "What time zone is {place} in?",
    "Outline a blog post about {concept}.",
    "Sorry, can you say that again more simply?",
    "ok cool. what else?",
    "Is {place} in Europe? Answer yes or no.",
    "Can dogs eat {food}? Yes or no?",
    "Is {concept} a real thing? Answer yes or no.",
    "Is it a good idea to learn {skill} at 40?",
    "Is water wet? Just say yes or no.",
    "Should I bring an umbrella to {place} in spring? yes/no",
    "Is a {topic} worth buying secondhand? Short answer please.",
    "Was {work} a good book or a bad one, in your opinion?",
]
FILL = {
    "thing": ["heater", "window", "fridge", "door lock", "shower", "washing machine"],
    "topic": TOPICS,
    "concept": [
        "inflation",
        "machine learning",
        "photosynthesis",
        "blockchain",
        "gravity",
        "democracy",
        "compound interest",
        "the stock market",
        "quantum computing",
        "recursion",
    ],
    "concept2": ["deflation", "deep learning", "respiration", "databases", "magnetism", "monarchy"],
    "skill": ["chess", "public speaking", "swimming", "cooking", "drawing", "sleeping well", "coding"],
    "language": ["Spanish", "German", "Japanese", "Italian", "Portuguese", "Korean"],
    "work": ["Hamlet", "The Hobbit", "Pride and Prejudice", "Dune", "The Matrix", "Moby Dick"],
    "food": ["rice and eggs", "chickpeas", "leftover chicken", "pasta and spinach", "tofu"],
    "event": ["my exams", "a job interview", "moving house", "a presentation", "my wedding"],
    "place": ["Lisbon", "Kyoto", "Peru", "Norway", "Cape Town", "Chicago", "Vietnam"],
    "job": ["nurse", "data analyst", "teacher", "chef", "software engineer", "lawyer"],
}

# --- math: multi-step arithmetic word problems (answer known) ----------------------------------------------
NAMES = [
    "Ana",
    "Ben",
    "Chen",
    "Dara",
    "Eli",
    "Fatima",
    "Gus",
    "Hana",
    "Ivan",
    "Jia",
    "Kofi",
    "Lena",
    "Maya",
    "Noah",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sam",
    "Tariq",
]
ITEMS = ["apples", "pencils", "stickers", "cookies", "marbles", "books", "cards", "eggs", "stamps", "shells"]


@dataclass(frozen=True)
class MathProblem:
    text: str
    answer: int


def math_problem(rng: random.Random) -> MathProblem:
    """One of several multi-step problem shapes with random names and numbers; the answer is computed."""
    name, other = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    a, b, c = rng.randint(3, 60), rng.randint(2, 30), rng.randint(2, 9)
    shape = rng.randrange(8)
    if shape == 0:
        ans = (a + b) * c
        text = f"{name} has {a} {item} and buys {b} more. Then {name} gets {c} times as many. How many {item} now?"
    elif shape == 1:
        total = a * c
        ans = total - b if total > b else total + b
        verb = "gives away" if total > b else "finds"
        text = (
            f"There are {c} boxes with {a} {item} in each. {name} {verb} {b} {item}. "
            f"How many {item} does {name} have left?"
        )
    elif shape == 2:
        price, qty, paid = rng.randint(2, 15), rng.randint(2, 9), 0
        paid = price * qty + rng.randint(1, 40)
        ans = paid - price * qty
        text = f"{name} buys {qty} notebooks at ${price} each and pays with ${paid}. How much change does {name} get?"
    elif shape == 3:
        speed, hours, extra = rng.randint(20, 90), rng.randint(2, 8), rng.randint(5, 60)
        ans = speed * hours + extra
        text = (
            f"A train travels at {speed} km per hour for {hours} hours, then {extra} km more. "
            f"How far does it travel in total?"
        )
    elif shape == 4:
        per_day, days, share = rng.randint(2, 20), rng.randint(3, 14), rng.choice([2, 3, 4])
        ans = per_day * days // share
        text = (
            f"{name} saves ${per_day} a day for {days} days and splits the total equally with {share - 1} "
            f"friend{'s' if share > 2 else ''}. How much does each person get (rounded down)?"
        )
    elif shape == 5:
        ans = a + 2 * a + b
        text = (
            f"{name} read {a} pages on Monday, twice as many on Tuesday and {b} pages on Wednesday. "
            f"How many pages did {name} read in all?"
        )
    elif shape == 6:
        ans = (a + b) - (c * 2)
        text = (
            f"{name} had {a} {item}, {other} gave {name} {b} more, and {name} lost {c} {item} twice. "
            f"How many {item} are left?"
        )
    else:
        length, width = rng.randint(3, 40), rng.randint(3, 40)
        ans = 2 * (length + width) * c
        text = (
            f"A garden is {length} m long and {width} m wide. How many meters of fence are needed for "
            f"{c} layers around it?"
        )
    phr = rng.choice(["{t}", "Solve: {t}", "{t} Show your work.", "Math problem: {t}", "{t} Think step by step."])
    return MathProblem(phr.format(t=text), int(ans))


# --- MMLU prompts -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MmluItem:
    id: str
    subject: str
    prompt: str
    outcomes: dict[str, bool]
    answer: str | None = None
    """Gold letter: not in the RouteLLM CSVs, so None (local LLMs cannot be scored on these rows)."""


MMLU_MODELS = {
    "mistralai/Mixtral-8x7B-Instruct-v0.1": "mixtral-8x7b-instruct",
    "gpt-4-1106-preview": "gpt-4-1106-preview",
}


def load_mmlu(data_dir: Path = DATA_DIR / "routellm_mmlu") -> list[MmluItem]:
    """Every row of the RouteLLM MMLU response CSVs, with outcomes keyed by model card name."""
    items: list[MmluItem] = []
    for path in sorted(data_dir.glob("mmlu_*.csv")):
        subject = path.stem.removeprefix("mmlu_")
        with open(path, encoding="utf-8", newline="") as handle:
            for k, row in enumerate(csv.DictReader(handle)):
                outcomes = {card: row[col].strip() == "True" for col, card in MMLU_MODELS.items()}
                items.append(MmluItem(f"mmlu-{subject}-{k}", subject, row["prompt"], outcomes))
    return items


# --- noise --------------------------------------------------------------------------------------------------
_KEYBOARD = "qwertyuiopasdfghjklzxcvbnm"


def noisy(text: str, rng: random.Random) -> str:
    """Odd casing and typos the way people type: lower/UPPER/Title case, a dropped or swapped letter."""
    roll = rng.random()
    if roll < 0.15:
        text = text.lower()
    elif roll < 0.22:
        text = text.upper()
    elif roll < 0.27:
        text = text.title()
    words = text.split(" ")
    for _ in range(rng.choice([0, 0, 1, 2])):
        i = rng.randrange(len(words))
        w = words[i]
        if len(w) > 3:
            j = rng.randrange(1, len(w) - 1)
            op = rng.randrange(3)
            if op == 0:
                w = w[:j] + w[j + 1 :]
            elif op == 1:
                w = w[: j - 1] + w[j] + w[j - 1] + w[j + 1 :]
            else:
                w = w[:j] + rng.choice(_KEYBOARD) + w[j:]
            words[i] = w
    return " ".join(words)


def _fill(template: str, rng: random.Random, text: str = "") -> str:
    values = {k: rng.choice(v) for k, v in FILL.items()}
    return template.format(text=text, **values)


@dataclass
class RequestSet:
    texts: list[str]
    labels: list[str]
    groups: list[str]
    """Which source/template family a row came from (for reporting)."""


def build_request_set(seed: int = SEED, per_task: int = 2500) -> tuple[RequestSet, RequestSet]:
    """Train and held-out request sets. Held-out rows use the held-out polarity sentences, held-out MMLU
    subjects, a seeded ~25 % of every template list (templates never seen in training) and fresh numbers."""
    rng = random.Random(seed)
    split = split_polarity()
    mmlu = load_mmlu()
    subjects = sorted({it.subject for it in mmlu})
    rng.shuffle(subjects)
    test_subjects = set(subjects[: max(1, len(subjects) // 4)])

    def cut(templates: list[str]) -> tuple[list[str], list[str]]:
        """A seeded quarter of every template list is held out (never seen in training)."""
        order = random.Random(seed).sample(range(len(templates)), len(templates))
        k = max(1, round(len(templates) * 0.75))
        return [templates[i] for i in sorted(order[:k])], [templates[i] for i in sorted(order[k:])]

    s_tr, s_te = cut(SENTIMENT_ASK_TEMPLATES)
    d_tr, d_te = cut(SENTIMENT_DECOYS)
    m_tr, m_te = cut(MC_TEMPLATES)
    c_tr, c_te = cut(CHAT_TEMPLATES)

    def make(held_out: bool, n: int) -> RequestSet:
        texts: list[str] = []
        labels: list[str] = []
        groups: list[str] = []
        sentences = [detokenize(s) if rng.random() < 0.6 else s for s in (split.test_x if held_out else split.train_x)]
        asks, decoys = (s_te, d_te) if held_out else (s_tr, d_tr)
        for _ in range(n):
            texts.append(noisy(rng.choice(asks).format(text=rng.choice(sentences)), rng))
            labels.append("sentiment")
            groups.append("sentiment")
        for _ in range(n // 3):
            texts.append(noisy(_fill(rng.choice(decoys), rng, rng.choice(sentences)), rng))
            labels.append("chat")
            groups.append("sentiment-decoy")
        pool = [it for it in mmlu if (it.subject in test_subjects) == held_out]
        for _ in range(n):
            texts.append(rng.choice(m_te if held_out else m_tr).format(q=rng.choice(pool).prompt))
            labels.append("multiple_choice")
            groups.append("multiple_choice")
        for _ in range(n):
            texts.append(noisy(math_problem(rng).text, rng))
            labels.append("math")
            groups.append("math")
        chats = c_te if held_out else c_tr
        for _ in range(n - n // 3):
            texts.append(noisy(_fill(rng.choice(chats), rng), rng))
            labels.append("chat")
            groups.append("chat")
        return RequestSet(texts, labels, groups)

    return make(False, per_task), make(True, max(200, per_task // 5))


def clean_for_features(text: str) -> str:
    """What the classifier reads is bounded elsewhere; here only collapse runs of whitespace."""
    return re.sub(r"\s+", " ", text).strip()
