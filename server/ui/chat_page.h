// The built-in chat page that tandemd serves at GET / (docs/chat-page.md): server/ui/chat.html,
// embedded in the binary at build time by embed_chat_page.cmake, and the Content-Security-Policy
// it is sent with. The page holds no secret: it is served without an API key, and asks the
// user for one when the API answers 401.
//
// Thread safety: both functions return views of constant static data; any thread may call them.
#ifndef TANDEM_SERVER_UI_CHAT_PAGE_H_
#define TANDEM_SERVER_UI_CHAT_PAGE_H_

#include <string_view>

namespace tandem::server::ui {

// The page's bytes (UTF-8 HTML with its CSS and JavaScript inline).
std::string_view ChatPageHtml();

// A Content-Security-Policy that lets the page run and nothing else: its one inline <script>
// and <style> by their SHA-256, connections (fetch) to its own origin only, no frames, forms,
// plugins, or other loads.
std::string_view ChatPageContentSecurityPolicy();

}  // namespace tandem::server::ui

#endif  // TANDEM_SERVER_UI_CHAT_PAGE_H_
