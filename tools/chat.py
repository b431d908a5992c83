"""Ask a checkpoint (original or converted) about images, with the training template and tiling.

    python tools/chat.py MODEL_DIR --image x.jpg [--image y.jpg] [--question "What is in the image?"]

Without --question it is interactive: each line is a question, the conversation carries over; an empty line ends it.
"""
import argparse
import sys

from PIL import Image

from internvl_plugin.chat import ChatSession


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('model_dir', help='an InternVL checkpoint folder or hub id')
    parser.add_argument('--image', action='append', default=[], help='an image (repeat for several)')
    parser.add_argument('--question', help='ask once and exit')
    parser.add_argument('--max-new-tokens', type=int, default=1024,
                        help='the longest answer, in tokens (default 1024, as the official examples); an answer ends '
                             "earlier at the template's end token, and shows as it is generated")
    parser.add_argument('--device', help='default: cuda when available, else cpu')
    parser.add_argument('--trust-remote-code', action='store_true',
                        help="run the tokenizer code the checkpoint's auto_map names (never needed for InternVL)")
    args = parser.parse_args()
    try:
        session = ChatSession(args.model_dir, device=args.device, trust_remote_code=args.trust_remote_code)
        if args.image:
            session.show([Image.open(path) for path in args.image])
    except (OSError, ValueError) as error:
        print(f'chat: error: {error}', file=sys.stderr)
        return 1
    if args.question:
        session.ask(args.question, args.max_new_tokens, on_text=_show)
        print()
        return 0
    while True:
        try:
            question = input('you> ').strip()
        except EOFError:
            return 0
        if not question:
            return 0
        print('model> ', end='', flush=True)
        session.ask(question, args.max_new_tokens, on_text=_show)
        print()


def _show(text: str) -> None:
    print(text, end='', flush=True)


if __name__ == '__main__':
    sys.exit(main())
