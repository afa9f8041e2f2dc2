"""Realistic credentials in notebook code, and ordinary cells that look like them.

The secrets are generated (fixed seed) in each kind's real format, so no real
credential is committed; ``SECRETS`` pairs each cell with the secret text
that must never leave the machine.
"""

from __future__ import annotations

import base64
import hashlib
import random
import string
import uuid

_rng = random.Random(20261127)
ALNUM = string.ascii_letters + string.digits
LOWER_ALNUM = string.ascii_lowercase + string.digits
UPPER_ALNUM = string.ascii_uppercase + string.digits


def _r(n: int, alphabet: str = ALNUM) -> str:
    return "".join(_rng.choice(alphabet) for _ in range(n))


def _b64(n: int) -> str:
    return base64.b64encode(_rng.randbytes(n)).decode()


def _pem(kind: str) -> str:
    body = "\n".join(_b64(48) for _ in range(6))
    return f"-----BEGIN {kind}-----\n{body}\n-----END {kind}-----"


def _jwt() -> str:
    head = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').decode().rstrip("=")
    claims = base64.urlsafe_b64encode(b'{"sub":"1234567890","name":"analyst","iat":1716239022}').decode().rstrip("=")
    return f"{head}.{claims}.{_r(43, ALNUM + '-_')}"


def _secrets() -> list[tuple[str, str, str]]:
    """(kind, cell source, the secret in it)."""
    aws_id, aws_secret = "AKIA" + _r(16, UPPER_ALNUM), _r(40, ALNUM + "/+")
    cases: list[tuple[str, str, str]] = []

    def add(kind: str, template: str, secret: str) -> None:
        cases.append((kind, template.format(s=secret), secret))

    add("aws access key id", 'os.environ["AWS_ACCESS_KEY_ID"] = "{s}"', aws_id)
    add("aws secret key", 'os.environ["AWS_SECRET_ACCESS_KEY"] = "{s}"', aws_secret)
    add("aws in boto3", 's3 = boto3.client("s3", aws_access_key_id="{s}")', "ASIA" + _r(16, UPPER_ALNUM))
    add("aws secret in boto3", 'session = boto3.Session(aws_secret_access_key="{s}")', _r(40, ALNUM + "/+"))
    add("gcp api key", 'gmaps = googlemaps.Client(key="{s}")', "AIza" + _r(35, ALNUM + "_-"))
    add("gcp key in url", 'url = f"https://maps.googleapis.com/maps/api/geocode/json?key={s}"', "AIza" + _r(35, ALNUM))
    add("gcp service account", 'info = {{"type": "service_account", "private_key": "{s}"}}',
        _pem("PRIVATE KEY").replace("\n", "\\n"))
    add("azure storage", 'conn = "DefaultEndpointsProtocol=https;AccountName=sales;AccountKey={s};"', _b64(66))
    add("azure client secret", 'client_secret = "{s}"', _r(8) + "~" + _r(31, ALNUM + "_.-"))
    add("github classic", 'g = Github("{s}")', "ghp_" + _r(36))
    add("github oauth", 'headers = {{"Authorization": "token {s}"}}', "gho_" + _r(36))
    add("github in comment", "# token for the CI bot: {s}", "ghs_" + _r(36))
    add("gitlab", 'gl = gitlab.Gitlab("https://gitlab.com", private_token="{s}")', "glpat-" + _r(20, ALNUM + "_-"))
    add("slack bot", 'slack = WebClient(token="{s}")', f"xoxb-{_r(12, string.digits)}-{_r(13, string.digits)}-{_r(24)}")
    add("slack webhook", 'requests.post("{s}", json={{"text": "done"}})',
        f"https://hooks.slack.com/services/T{_r(10, UPPER_ALNUM)}/B{_r(10, UPPER_ALNUM)}/{_r(24)}")
    add("stripe live", 'stripe.api_key = "{s}"', "sk_live_" + _r(24))
    add("stripe test", 'STRIPE_KEY = "{s}"', "sk_test_" + _r(24))
    add("openai legacy", 'openai.api_key = "{s}"', "sk-" + _r(20) + "T3BlbkFJ" + _r(20))
    add("openai project", 'client = OpenAI(api_key="{s}")', "sk-proj-" + _r(48, ALNUM + "_-") + "7Q")
    add("mistral", 'os.environ["MISTRAL_API_KEY"] = "{s}"', _r(32))
    add("mistral client", 'client = Mistral(api_key="{s}")', _r(32))
    add("hugging face", 'login(token="{s}")', "hf_" + _r(34))
    add("hugging face env", 'os.environ["HF_TOKEN"] = "{s}"', "hf_" + _r(34))
    add("anthropic", 'anthropic.Anthropic(api_key="{s}")', "sk-ant-api03-" + _r(80, ALNUM + "_-"))
    add("rsa private key", 'key = """{s}"""', _pem("RSA PRIVATE KEY"))
    add("openssh private key", "PEM = '''{s}'''", _pem("OPENSSH PRIVATE KEY"))
    add("ec private key", 'pem = """{s}"""', _pem("EC PRIVATE KEY"))
    add("postgres url", 'engine = create_engine("postgresql://analyst:{s}@db.internal:5432/sales")', _r(14))
    add("mysql url", 'con = "mysql+pymysql://root:{s}@127.0.0.1/shop"', _r(12))
    add("mongodb url", 'client = MongoClient("mongodb+srv://admin:{s}@cluster0.mongodb.net")', _r(16))
    add("password assignment", 'password = "{s}"', _r(12, ALNUM + "!@#$%"))
    add("db password dict", 'DB = {{"user": "etl", "password": "{s}"}}', _r(10))
    add("typed password", 'db_password: str = "{s}"', _r(11))
    add("secret assignment", 'SECRET_KEY = "{s}"', "django-insecure-" + _r(40, LOWER_ALNUM))
    add("token assignment", 'api_token = "{s}"', _r(40, LOWER_ALNUM))
    add("api key kwarg", 'wandb.login(key="{s}")', _r(40, "0123456789abcdef"))
    add("bearer header", 'headers = {{"Authorization": "Bearer {s}"}}', _r(40, ALNUM + "-._"))
    add("jwt", 'jwt_token = "{s}"', _jwt())
    add("sendgrid", 'sg = SendGridAPIClient("{s}")', f"SG.{_r(22, ALNUM + '_-')}.{_r(43, ALNUM + '_-')}")
    add("twilio", 'client = Client("{s}", auth)', "AC" + _r(32, LOWER_ALNUM))
    add("telegram", 'bot = telebot.TeleBot("{s}")', f"{_r(10, string.digits)}:{_r(35, ALNUM + '_-')}")
    add("npm", 'npmrc = "//registry.npmjs.org/:_authToken={s}"', "npm_" + _r(36))
    add("pypi", 'twine_password = "{s}"', "pypi-AgEIcHlwaS5vcmc" + _r(80, ALNUM + "_-"))
    add("discord", 'client.run("{s}")', f"M{_r(23, ALNUM)}.{_r(6, ALNUM)}.{_r(27, ALNUM + '_-')}")
    add("mailchimp", 'mc.set_config({{"api_key": "{s}"}})', _r(32, "0123456789abcdef") + "-us14")
    add("high entropy", 'STORE_SIGNING_VALUE = "{s}"', _r(40))
    return cases


def _ordinary() -> list[str]:
    """Cells a data scientist writes, with strings that look random but are not credentials."""
    digest = hashlib.sha256(b"housing").hexdigest()
    md5 = hashlib.md5(b"titanic").hexdigest()  # noqa: S324 -- a data checksum, as notebooks have
    image = "data:image/png;base64," + base64.b64encode(_rng.randbytes(300)).decode()
    ids = [str(uuid.UUID(int=_rng.getrandbits(128))) for _ in range(3)]
    return [
        'import pandas as pd\nimport numpy as np\nfrom sklearn.model_selection import train_test_split',
        f'EXPECTED_SHA256 = "{digest}"\nassert hashlib.sha256(data).hexdigest() == EXPECTED_SHA256',
        f'checksums = {{"titanic.csv": "{md5}"}}',
        f'run_ids = {ids!r}',
        f'request_id = "{ids[0]}"',
        f'logo = "{image}"',
        f'display(HTML(\'<img src="{image}"/>\'))',
        'df["median_house_value_per_household_income_ratio"] = df.median_house_value / df.median_income',
        'housing = pd.read_csv("datasets/housing/housing.csv")',
        'url = "https://raw.githubusercontent.com/ageron/data/main/lifesat/lifesat.csv"',
        'commit = "3f2a9c1e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39"',
        'colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]',
        'token_counts = Counter(tokenizer.tokenize(text))',
        'tokenizer = AutoTokenizer.from_pretrained("bert-base-uncased")',
        'password_strength = df["password"].str.len()',
        'passwords = load_dataset("rockyou_sample")',
        'api_key = os.environ["MISTRAL_API_KEY"]',
        'secret = getpass.getpass("Secret: ")',
        'token = os.getenv("HF_TOKEN")',
        'MODEL = "sentence-transformers/all-MiniLM-L6-v2"',
        'np.random.seed(42)\nX = np.random.randn(100, 3)',
        'dtypes = {"ocean_proximity": "category", "total_bedrooms": "float32"}',
        'pattern = r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\\.[A-Za-z]{2,}$"',
        'encoded = base64.b64encode(b"hello world")',
        'sample = "Q29uZ3JhdHVsYXRpb25zIQ=="',
        'path = "/home/jovyan/work/data/2024-03-01T12:00:00Z/part-00000.parquet"',
        'df.to_sql("orders", engine, if_exists="replace")',
        'engine = create_engine("sqlite:///sales.db")',
        'conn = psycopg2.connect(host="db", dbname="sales", user=os.environ["PGUSER"])',
        '# Set your API key in the environment: export MISTRAL_API_KEY=...',
        'print(f"{len(train_set)} train + {len(test_set)} test")',
        'isbn = "978-1-492-03264-9"',
        'df.groupby("ocean_proximity")["median_house_value"].agg(["mean", "std"])',
        'x = "aGVsbG8gd29ybGQgZnJvbSBhIG5vdGVib29r"',
        'layers = [tf.keras.layers.Dense(300, activation="relu"), tf.keras.layers.Dense(10)]',
        'ckpt = "my_mnist_model/checkpoints/ckpt-0007.weights.h5"',
        'doi = "10.5281/zenodo.4296287"',
        'hash_bucket = hashlib.md5(identifier.encode()).hexdigest()[:8]',
        'ts = pd.Timestamp("2023-11-14T22:13:20.123456Z")',
        'SPLIT_SEED = 20231114',
        'tokens = ["<pad>", "<unk>", "<s>", "</s>"]',
        'cols = ["longitude", "latitude", "housing_median_age", "total_rooms"]',
        "def password_ok(password: str) -> bool:\n    return len(password) >= 12",
        'key = jax.random.PRNGKey(0)',
    ]


SECRETS = _secrets()
ORDINARY = _ordinary()
