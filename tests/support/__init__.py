"""What tests share, typed: the tokens, the app under test in process, real service
processes, the stores' helpers, fakes of Prefect's answers, and waiting for a condition.

``tests/conftest.py`` keeps only fixtures; a test imports its helpers from here, by module
(``from tests.support.tokens import TOKEN, auth``)."""
