"""Seed 003's daily poster run: write a CSV of N CRM products (default 50) for ``imagegate batch``.

    python examples/daily_posters.py > products.csv               # 50 products, UTF-8 CSV on stdout
    python examples/daily_posters.py --count 5 --day 2025-06-01  # another day's products (other ids)
    python examples/daily_posters.py --logo logo.png > products.csv  # also draw a sample logo to upload

Then (see docs/cli-batch.md):

    curl -X PUT --data-binary @logo.png -H 'Content-Type: image/png' -H "Authorization: Bearer $IMAGEGATE_TOKEN" \\
         http://127.0.0.1:8000/v1/logo
    imagegate batch products.csv --recipe crm.product_images \\
         --options '{"styles": ["main","detail","social"], "watermark": {"logo": true}}'

The records are made up but deterministic (the same day gives the same file, so a re-run resumes; add
``--retry-failed`` to make the posters of records that failed again).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import random
import sys

CATALOGUE = {
    "outdoor": (
        ["登山鞋", "冲锋衣", "帐篷", "登山杖", "睡袋", "头灯", "折叠椅", "Trail Backpack"],
        ["防水", "轻便", "耐磨", "透气", "防风", "快干", "可折叠"],
    ),
    "clothing": (
        ["羊毛围巾", "纯棉T恤", "羽绒服", "牛仔裤", "Linen Shirt", "运动卫衣"],
        ["亲肤", "保暖", "修身", "抗皱", "100%纯棉", "可机洗"],
    ),
    "electronics": (
        ["蓝牙耳机", "智能手表", "充电宝", "机械键盘", "Wireless Mouse", "便携音箱"],
        ["降噪", "长续航", "快充", "IP67防水", "低延迟", "Type-C"],
    ),
    "home": (
        ["智能保温杯", "香薰机", "记忆枕", "不粘锅", "Ceramic Vase", "台灯"],
        ["316不锈钢", "12小时保温", "静音", "易清洗", "护眼", "一键操作"],
    ),
}
SELLING_POINTS = ["限时特惠", "新品上市", "年度爆款", "买一送一", "会员专享", ""]
# The line of text at the bottom of the social poster
TAGLINES = ["品质生活 从这里开始", "今日下单 明日送达", "好物不等人", "Made for every day", ""]


def products(count: int, day: datetime.date) -> list[dict[str, object]]:
    rng = random.Random(day.toordinal())  # noqa: S311  # made-up sample data, not a secret
    rows: list[dict[str, object]] = []
    for number in range(1, count + 1):
        category = rng.choice(sorted(CATALOGUE))
        names, features = CATALOGUE[category]
        rows.append(
            {
                "id": f"P{day:%Y%m%d}-{number:03d}",
                "name": f"{rng.choice(names)} {rng.choice('ABCDEFGHJK')}{rng.randint(1, 9)}",
                "category": category,
                "features": rng.sample(features, rng.randint(1, 4)),
                "selling_point": rng.choice(SELLING_POINTS),
                # its own stream, so the other columns stay what they were before taglines were added
                "tagline": random.Random(f"tagline-{day}-{number}").choice(TAGLINES),  # noqa: S311
            }
        )
    return rows


def write_csv(rows: list[dict[str, object]], out: object) -> None:
    writer = csv.writer(out, lineterminator="\n")  # type: ignore[arg-type]
    writer.writerow(["id", "name", "category", "features", "selling_point", "tagline"])
    for row in rows:
        features = json.dumps(row["features"], ensure_ascii=False)  # a [..] cell is JSON: a list field
        writer.writerow([row["id"], row["name"], row["category"], features, row["selling_point"], row["tagline"]])


def draw_logo(path: str) -> None:
    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (400, 160), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((4, 4, 396, 156), radius=36, fill=(200, 16, 46, 230))
    draw.ellipse((24, 30, 124, 130), fill=(255, 215, 0, 255))
    draw.text((150, 58), "ACME", fill=(255, 255, 255, 255), font_size=48)
    image.save(path, "PNG")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50, help="products (default 50)")
    parser.add_argument("--day", type=datetime.date.fromisoformat, default=datetime.date.today(), help="YYYY-MM-DD")
    parser.add_argument("--logo", metavar="PNG", help="also write a sample logo to this file")
    args = parser.parse_args()
    write_csv(products(args.count, args.day), sys.stdout)
    if args.logo:
        draw_logo(args.logo)
        print(f"wrote {args.logo}", file=sys.stderr)


if __name__ == "__main__":
    main()
