#!/usr/bin/env bash
# Post the CI report (scripts/ci_report.py's report.md) on the pull request as one comment, edited in place
# on every later push: the earlier comment is the bot's one that starts with the report's marker line.
# Needs gh (on GitHub's runners), GH_TOKEN (pull-requests: write), GITHUB_REPOSITORY and PR_NUMBER.
# Usage: scripts/ci_comment.sh REPORT
set -euo pipefail
report=$1
: "${GH_TOKEN:?}" "${GITHUB_REPOSITORY:?}" "${PR_NUMBER:?}"
marker=$(sed -n 1p "$report")
case $marker in
  "<!--"*"-->") ;;
  *) echo "$report: the first line is not the report's marker comment" >&2; exit 1 ;;
esac
comments="repos/$GITHUB_REPOSITORY/issues/$PR_NUMBER/comments"
existing=$(MARKER=$marker gh api --paginate "$comments" \
  --jq '.[] | select(.user.login == "github-actions[bot]" and (.body | startswith(env.MARKER))) | .id' | sed -n 1p)
if [ -n "$existing" ]; then
  gh api --method PATCH "repos/$GITHUB_REPOSITORY/issues/comments/$existing" -F "body=@$report" >/dev/null
  echo "updated comment $existing on #$PR_NUMBER"
else
  gh api --method POST "$comments" -F "body=@$report" >/dev/null
  echo "commented on #$PR_NUMBER"
fi
