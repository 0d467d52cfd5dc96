# Writes OUT (a .cc) from TEMPLATE with chat.html (IN) embedded: @PAGE_BYTES@ becomes the file's
# bytes as a char array, @SCRIPT_SHA256@ / @STYLE_SHA256@ the base64 SHA-256 of the text inside
# its one <script> and one <style> element, as a Content-Security-Policy hash source wants it.
# CMake alone does it (cmake -P), so the build needs no other tool. Run by server/ui's
# CMakeLists.txt whenever chat.html, the template or this script changes.
#   cmake -DIN=chat.html -DTEMPLATE=chat_page.cc.in -DOUT=chat_page.cc -P embed_chat_page.cmake
cmake_minimum_required(VERSION 3.25)
foreach(var IN ITEMS IN TEMPLATE OUT)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "embed_chat_page.cmake: -D${var}=... is required")
  endif()
endforeach()

# Base64 of a string of hex digits (whole bytes), as RFC 4648 with padding.
function(hex_to_base64 hex out_var)
  set(alphabet "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
  string(LENGTH "${hex}" n)
  set(result "")
  set(i 0)
  while(i LESS n)
    string(SUBSTRING "${hex}" ${i} 6 group)  # up to 3 bytes
    string(LENGTH "${group}" digits)
    math(EXPR bytes "${digits} / 2")
    while(digits LESS 6)
      string(APPEND group "0")
      math(EXPR digits "${digits} + 1")
    endwhile()
    math(EXPR value "0x${group}")
    foreach(shift IN ITEMS 18 12 6 0)
      math(EXPR index "(${value} >> ${shift}) & 63")
      string(SUBSTRING "${alphabet}" ${index} 1 c)
      string(APPEND result "${c}")
    endforeach()
    if(bytes LESS 3)
      # 1 byte makes 2 characters and 2 bytes 3; the rest is padding.
      math(EXPR keep "${bytes} + 1")
      string(LENGTH "${result}" len)
      math(EXPR cut "${len} - 4 + ${keep}")
      string(SUBSTRING "${result}" 0 ${cut} result)
      if(bytes EQUAL 1)
        string(APPEND result "==")
      else()
        string(APPEND result "=")
      endif()
    endif()
    math(EXPR i "${i} + 6")
  endwhile()
  set(${out_var} "${result}" PARENT_SCOPE)
endfunction()

# The CSP hash source of the text between `<tag>` and `</tag>`, which must occur exactly once
# and without attributes (a hash covers the element's text byte for byte).
function(element_hash text tag out_var)
  string(FIND "${text}" "<${tag}>" open)
  string(FIND "${text}" "<${tag}>" last_open REVERSE)
  string(FIND "${text}" "</${tag}>" close)
  string(FIND "${text}" "<${tag} " with_attributes)
  if(open EQUAL -1 OR close EQUAL -1 OR NOT open EQUAL last_open OR close LESS open
     OR NOT with_attributes EQUAL -1)
    message(FATAL_ERROR "${IN}: needs exactly one <${tag}>...</${tag}>, without attributes")
  endif()
  string(LENGTH "<${tag}>" tag_len)
  math(EXPR begin "${open} + ${tag_len}")
  math(EXPR len "${close} - ${begin}")
  string(SUBSTRING "${text}" ${begin} ${len} body)
  string(SHA256 hex "${body}")
  hex_to_base64("${hex}" b64)
  set(${out_var} "${b64}" PARENT_SCOPE)
endfunction()

file(READ "${IN}" page_text)
element_hash("${page_text}" script SCRIPT_SHA256)
element_hash("${page_text}" style STYLE_SHA256)

file(READ "${IN}" page_hex HEX)
string(LENGTH "${page_hex}" hex_len)
if(hex_len EQUAL 0)
  message(FATAL_ERROR "${IN} is empty")
endif()
# 0xNN, 16 to a line (CMake's regular expressions have no {n}: the line's pattern is spelled out).
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1, " bytes "${page_hex}")
string(REPEAT "0x[0-9a-f][0-9a-f], " 16 line)
string(REGEX REPLACE "(${line})" "\\1\n    " PAGE_BYTES "${bytes}")
string(REPLACE " \n" "\n" PAGE_BYTES "${PAGE_BYTES}")
string(STRIP "${PAGE_BYTES}" PAGE_BYTES)

configure_file("${TEMPLATE}" "${OUT}.tmp" @ONLY)
# Only a changed output touches the file, so an unchanged page recompiles nothing.
file(COPY_FILE "${OUT}.tmp" "${OUT}" ONLY_IF_DIFFERENT)
file(REMOVE "${OUT}.tmp")
