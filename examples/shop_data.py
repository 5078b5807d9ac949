"""Two small CSV files to try the train -> predict-on-new-data -> serve flow of README.md:

    python examples/shop_data.py DIR      # writes DIR/train.csv (labelled) and DIR/new.csv (unlabelled)

train.csv: click,buy (the funnel's labels), user and city (strings), item (signed integer ids), price (a
number, sometimes missing). new.csv: other rows of the same shop with no labels, the columns in another
order, users and a city that training never saw, and two key columns (request_id, session) to join the
scores back on.
"""
import csv
import sys
from pathlib import Path

import numpy as np

CITIES = ["paris", "tōkyō", "new york", "são paulo", "o'hare, il", "lagos"]


def write_train(path: Path, rows: int = 20_000, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["click", "buy", "user", "item", "city", "price"])
        for _ in range(rows):
            user, item, city = rng.integers(0, 500), rng.integers(-50, 200), rng.integers(0, len(CITIES))
            price = rng.gamma(2.0, 10.0)
            click = rng.random() < 0.1 + 0.3 * (city % 2) + 0.1 * (item % 3 == 0)
            buy = click and rng.random() < 0.2 + 0.3 * (price < 15) + 0.002 * (user % 50)
            out.writerow([int(click), int(buy), f"u{user}", item, CITIES[city],
                          "" if rng.random() < 0.02 else f"{price:.2f}"])


def write_new(path: Path, rows: int = 1_000, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["request_id", "city", "price", "session", "item", "user"])
        for r in range(rows):
            city = "berlin" if r % 9 == 0 else CITIES[rng.integers(0, len(CITIES))]
            out.writerow([f"req-{r:05d}", city, f"{rng.gamma(2.0, 10.0):.2f}", f"s{r % 37}",
                          int(rng.integers(-60, 220)), f"u{rng.integers(0, 600)}"])


if __name__ == "__main__":
    directory = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    directory.mkdir(parents=True, exist_ok=True)
    write_train(directory / "train.csv")
    write_new(directory / "new.csv")
    print(f"wrote {directory / 'train.csv'} and {directory / 'new.csv'}")
